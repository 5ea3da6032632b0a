"""A local S3 server for the backup scenario: moto's S3 server on the controller's loopback, behind HAProxy for
TLS (moto's own TLS ends connections without close_notify, which pgBackRest's client takes as an error).

  s3_server.py start DIR --endpoint NAME --port PORT --moto-port PORT --region R --bucket B
  s3_server.py stop DIR

DIR holds haproxy.cfg (written by the playbook), the pid files and moto.log. The access key and secret come from
the environment (S3_KEY, S3_SECRET), never the command line. start prints "started" when it started the servers
and "running" when they already ran; stop prints "stopped" or "not running"."""

import argparse
import os
import pathlib
import subprocess
import sys
import time


def running(pidfile):
    try:
        os.kill(int(pidfile.read_text(encoding="utf-8")), 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    return True


def start(args):
    moto_pid = args.dir / "moto.pid"
    if running(moto_pid):
        return "running"
    env = dict(os.environ, MOTO_S3_CUSTOM_ENDPOINTS=f"https://{args.endpoint}:{args.port}")
    with open(args.dir / "moto.log", "wb") as log:
        moto = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(args.moto_port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    moto_pid.write_text(str(moto.pid), encoding="utf-8")
    cfg = str(args.dir / "haproxy.cfg")
    subprocess.run(["/usr/sbin/haproxy", "-c", "-q", "-f", cfg], check=True)
    subprocess.run(["/usr/sbin/haproxy", "-D", "-f", cfg], check=True)
    import boto3  # pylint: disable=import-outside-toplevel
    from botocore.exceptions import EndpointConnectionError  # pylint: disable=import-outside-toplevel
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{args.moto_port}", region_name=args.region,
                      aws_access_key_id=os.environ["S3_KEY"], aws_secret_access_key=os.environ["S3_SECRET"])
    for _attempt in range(100):
        try:
            s3.create_bucket(Bucket=args.bucket, CreateBucketConfiguration={"LocationConstraint": args.region})
            return "started"
        except EndpointConnectionError:  # still starting
            time.sleep(0.2)
    raise SystemExit(f"moto's S3 server did not start: see {args.dir / 'moto.log'}")


def stop(args):
    stopped = False
    for name in ("moto.pid", "haproxy.pid"):
        pidfile = args.dir / name
        if running(pidfile):
            os.kill(int(pidfile.read_text(encoding="utf-8")), 15)
            stopped = True
        pidfile.unlink(missing_ok=True)
    return "stopped" if stopped else "not running"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("dir", type=pathlib.Path)
    p.add_argument("--endpoint")
    p.add_argument("--port", type=int)
    p.add_argument("--moto-port", type=int)
    p.add_argument("--region")
    p.add_argument("--bucket")
    args = p.parse_args()
    print(start(args) if args.action == "start" else stop(args))


if __name__ == "__main__":
    main()

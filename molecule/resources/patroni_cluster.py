"""A Patroni cluster of systemd containers, driven with docker: its members as patronictl sees them, the
health of replication, and a writer on the client that commits a numbered row every 100 ms through
HAProxy. Shared by the `production` scenario's tests and benchmarks/bench_failover.py."""

import json
import subprocess
import time

# Commits INSERT (run, n) every 100 ms through the given DSN for the given seconds (or until OUT.stop
# exists), reconnecting on any error, and writes what was acknowledged (n, time) and what failed. psycopg's automatic server-side
# prepared statements are off: the read-write port is PgBouncer in transaction mode.
WRITER = r"""
import json, os, sys, time
import psycopg
dsn, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
acked, failed, conn, n = [], [], None, 0
end = time.time() + seconds
while time.time() < end and not os.path.exists(out + ".stop"):
    n += 1
    t = time.time()
    try:
        if conn is None:
            conn = psycopg.connect(dsn, connect_timeout=2, autocommit=True, prepare_threshold=None)
        conn.execute("INSERT INTO ha_probe (run, n) VALUES (%s, %s)", (out, n))
        acked.append([n, time.time()])
    except psycopg.Error as exc:
        failed.append([n, t, str(exc).strip()[:120]])
        try:
            conn.close()
        except Exception:
            pass
        conn = None
    time.sleep(max(0.0, t + 0.1 - time.time()))
with open(out + ".tmp", "w") as fh:
    json.dump({"acked": acked, "failed": failed}, fh)
os.rename(out + ".tmp", out)
"""


def docker(*args, check=True):
    """docker ARGS; the completed process."""
    res = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])}: {res.stderr.strip()}")
    return res


class Cluster:
    """The members (container names), the client container and the read-write DSN on the client."""

    def __init__(self, members, client, rw_dsn):
        self.names = list(members)
        self.client = client
        self.rw_dsn = rw_dsn

    def psql(self, sql, dsn=None, check=True):
        res = docker("exec", self.client, "psql", dsn or self.rw_dsn, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql, check=False)
        if check:
            assert res.returncode == 0, res.stderr
        return res

    def leader_sql(self, member, sql):
        return docker("exec", member, "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-c", sql, check=False)

    def patronictl(self, member, *args):
        return docker("exec", member, "patronictl", "-c", "/etc/patroni/config.yml", *args)

    def members(self):
        """patronictl's view of the cluster, from the first member that answers."""
        for name in self.names:
            res = docker("exec", name, "patronictl", "-c", "/etc/patroni/config.yml", "list", "-f", "json", check=False)
            if res.returncode == 0:
                return json.loads(res.stdout)
        raise AssertionError("no member answers")

    def leader(self):
        found = [m["Member"] for m in self.members() if m["Role"] == "Leader"]
        return found[0] if found else None

    def healthy(self):
        """The leader's name when it runs and every other member streams from it (asked of the leader's
        pg_stat_replication: Patroni 3.0 reports replicas as running, not streaming); else None."""
        lead = [m["Member"] for m in self.members() if m["Role"] == "Leader" and m["State"] == "running"]
        if len(lead) != 1:
            return None
        res = self.leader_sql(lead[0], "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        return lead[0] if res.returncode == 0 and res.stdout.strip() == str(len(self.names) - 1) else None

    def wait_for(self, what, predicate, timeout=180):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                value = predicate()
            except AssertionError:
                value = None
            if value:
                return value
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}: {self.members()}")

    def prepare_probe(self, password, connection_limit=20):
        """The probe's test login ha_probe with its own schema (made as postgres on the leader), and its table."""
        lead = self.wait_for("a healthy cluster", self.healthy)
        docker("exec", lead, "runuser", "-u", "postgres", "--", "psql", "-d", "selfbase", "-XAtq", "-v", "ON_ERROR_STOP=1",
               "-c", "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ha_probe') THEN "
               f"CREATE ROLE ha_probe LOGIN PASSWORD '{password}'; END IF; END $$; "
               f"ALTER ROLE ha_probe CONNECTION LIMIT {int(connection_limit)}; "
               "CREATE SCHEMA IF NOT EXISTS ha_probe AUTHORIZATION ha_probe")
        self.psql("CREATE TABLE IF NOT EXISTS ha_probe (run text, n int, at timestamptz NOT NULL DEFAULT now(), "
                  "PRIMARY KEY (run, n))")

    def start_writer(self, seconds, tag):
        out = f"/tmp/writer-{tag}.json"
        docker("exec", self.client, "rm", "-f", out, out + ".stop")
        self.psql(f"DELETE FROM ha_probe WHERE run = '{out}'")
        subprocess.run(["docker", "exec", "-i", self.client, "sh", "-c", "cat > /tmp/writer.py"], input=WRITER, text=True,
                       check=True)
        docker("exec", "-d", self.client, "python3", "/tmp/writer.py", self.rw_dsn, str(seconds), out)
        return out

    def stop_writer(self, out):
        docker("exec", self.client, "touch", out + ".stop")

    def writer_result(self, out, seconds):
        deadline = time.time() + seconds + 30
        while time.time() < deadline:
            res = docker("exec", self.client, "cat", out, check=False)
            if res.returncode == 0 and res.stdout:
                return json.loads(res.stdout)
            time.sleep(1)
        raise AssertionError("the writer did not finish")

    def lost(self, result, out):
        """Acknowledged rows that are not on the current leader."""
        acked = [row[0] for row in result["acked"]]
        present = {int(x) for x in self.psql(f"SELECT n FROM ha_probe WHERE run = '{out}'").stdout.split()}
        return sorted(set(acked) - present)

    def kill(self, member):
        docker("kill", member)

    def start(self, member):
        docker("start", member)

    def down(self):
        """The members patronictl does not see running."""
        seen = {m["Member"] for m in self.members() if m["State"] in ("running", "streaming")}
        return [m for m in self.names if m not in seen]

    def switchover(self, leader, candidate):
        self.patronictl(leader, "switchover", "--leader", leader, "--candidate", candidate, "--force")


def outage_end_after(result, moment):
    """When writes came back after the longest pause between acknowledged writes that ends after moment
    (commits acknowledged while `docker kill` was still on its way do not count as a recovery), or None."""
    times = [row[1] for row in result["acked"]]
    gaps = [(b - a, b) for a, b in zip(times, times[1:]) if b > moment]
    return max(gaps)[1] if gaps else None


def longest_pause_after(result, moment):
    """The longest time between two acknowledged writes, the later one after moment."""
    times = [row[1] for row in result["acked"]]
    gaps = [b - a for a, b in zip(times, times[1:]) if b > moment]
    return round(max(gaps), 2) if gaps else None

"""selfbase billing service: the Stripe webhook receiver and the tenants' Checkout and Customer Portal sessions (a
WSGI application, served by gunicorn) and the sync job (reconcile from /v1/events, dunning's clock, usage to
billing meters), around stripe_events.py and sessions.py.

    gunicorn selfbase_billing:application      # SELFBASE_BILLING_CONFIG names the JSON configuration
    python3 selfbase_billing.py sync            # the timer's job; prints counts and writes metrics
    python3 selfbase_billing.py check-config FILE
"""

import json
import os
import sys
import tempfile
import time

import sessions
import stripe_events

DEFAULT_CONFIG = "/etc/selfbase/billing/config.json"
REQUIRED = {"conninfo": str, "api_key": str, "api_base": str, "api_version": str, "webhook_secrets": list,
            "tolerance": int, "sync": dict}
SESSIONS = {"path": str, "jwt_keys": list, "return_hosts": list, "currency": str, "portal_configuration": str}
SYNC = {"reconcile": bool, "overlap": int, "meter_push": bool, "meter_api": str, "settle": int, "lookback": int,
        "workers": int, "metrics_file": str}


def check(config):
    """The configuration's errors, each naming its field."""
    errors = ["%s: missing or not a %s" % (k, t.__name__) for k, t in REQUIRED.items()
              if not isinstance(config.get(k), t)]
    if errors:
        return errors
    errors += ["%s: unknown field" % k for k in set(config) - set(REQUIRED) - {"sessions"}]
    errors += check_sessions(config.get("sessions"))
    errors += ["sync.%s: missing or not a %s" % (k, t.__name__) for k, t in SYNC.items()
               if not isinstance(config["sync"].get(k), t)]
    if not config["webhook_secrets"] or not all(str(s).startswith("whsec_") for s in config["webhook_secrets"]):
        errors.append("webhook_secrets: one or two whsec_ secrets")
    if len(config["webhook_secrets"]) > 2:
        errors.append("webhook_secrets: at most two (the current one and the one being rotated out)")
    if not 1 <= config["tolerance"] <= 3600:
        errors.append("tolerance: 1 to 3600 seconds")
    if not config["api_key"].startswith(("sk_", "rk_")):
        errors.append("api_key: a secret (sk_) or restricted (rk_) key")
    if config["sync"].get("meter_api") not in ("v1", "v2"):
        errors.append("sync.meter_api: v1 (one meter event a call, checked at once) or v2 (the meter event stream)")
    if not 0 < config["sync"].get("lookback", 0) <= 34 * 86400:
        errors.append("sync.lookback: 1 second to 34 days")
    return errors


def check_sessions(conf):
    """Errors of the optional sessions block (absent: no sessions are served)."""
    if conf is None:
        return []
    if not isinstance(conf, dict):
        return ["sessions: an object"]
    errors = ["sessions.%s: missing or not a %s" % (k, t.__name__) for k, t in SESSIONS.items()
              if not isinstance(conf.get(k), t)]
    errors += ["sessions.%s: unknown field" % k for k in set(conf) - set(SESSIONS)]
    if errors:
        return errors
    if not (conf["path"].startswith("/") and conf["path"].endswith("/")) or conf["path"] == "/":
        errors.append("sessions.path: a path prefix that starts and ends with /, not / itself")
    if not conf["jwt_keys"] or not all(isinstance(k, str) and len(k) >= 32 for k in conf["jwt_keys"]):
        errors.append("sessions.jwt_keys: one or two HS256 keys of 32 characters or more")
    if not conf["return_hosts"] or not all(isinstance(h, str) and h and "/" not in h for h in conf["return_hosts"]):
        errors.append("sessions.return_hosts: the host names (or patterns such as *.example.com) users return to")
    if len(conf["currency"]) != 3 or not conf["currency"].isalpha() or not conf["currency"].islower():
        errors.append("sessions.currency: a lower-case ISO 4217 code such as usd")
    if conf["portal_configuration"] and not conf["portal_configuration"].startswith("bpc_"):
        errors.append("sessions.portal_configuration: a portal configuration id (bpc_...) or empty for the default")
    return errors


def load(path=None):
    with open(path or os.environ.get("SELFBASE_BILLING_CONFIG", DEFAULT_CONFIG), encoding="utf-8") as fh:
        config = json.load(fh)
    errors = check(config)
    if errors:
        raise SystemExit("billing configuration: " + "; ".join(errors))
    return config


def api(config):
    return stripe_events.StripeApi(config["api_key"], config["api_base"], config["api_version"])


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def write_metrics(path, values):
    """node_exporter's textfile collector: written whole, then renamed."""
    lines = []
    for name, (help_text, samples) in sorted(values.items()):
        lines += ["# HELP %s %s" % (name, help_text), "# TYPE %s gauge" % name]
        lines += ["%s%s %s" % (name, labels, value) for labels, value in samples]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".billing-")
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def sync(config):
    conn = stripe_events.connect(config["conninfo"])
    client = api(config)
    out, ok = {"started": time.time()}, 1
    try:
        if config["sync"]["reconcile"]:
            out["reconcile"] = stripe_events.reconcile(conn, client, config["sync"]["overlap"])
        out["suspended"] = [r["tenant"] for r in stripe_events.dunning_tick(conn)]
        if config["sync"]["meter_push"]:
            out["meter_push"] = stripe_events.push_usage(conn, client, config["sync"]["settle"],
                                                         config["sync"]["lookback"], config["sync"]["workers"],
                                                         stream=config["sync"]["meter_api"] == "v2")
            out["meter_errors"] = stripe_events.read_meter_errors(conn, client, config["sync"]["overlap"])
    except Exception as e:  # reported, and the metrics say the run failed; the timer runs it again
        ok, out["error"] = 0, "%s: %s" % (type(e).__name__, e)
        raise
    finally:
        pushed = out.get("meter_push") or {}
        write_metrics(config["sync"]["metrics_file"], {
            "selfbase_billing_sync_success": ("1 when the last sync run succeeded.", [("", ok)]),
            "selfbase_billing_sync_last_run_timestamp_seconds": ("When the last sync run ended.",
                                                                 [("", int(time.time()))]),
            "selfbase_billing_meter_push_unsent": ("Planned meter events Stripe had not taken after the last run.",
                                                   [("", pushed.get("planned", 0) - pushed.get("sent", 0))]),
            "selfbase_billing_meter_events_refused": ("Meter events that Stripe's error reports read by the last run "
                                                      "say it refused.",
                                                      [("", (out.get("meter_errors") or {}).get("refused", 0))]),
            "selfbase_billing_events_reconciled": ("Events the last run recovered from /v1/events.",
                                                   [("", (out.get("reconcile") or {}).get("applied", 0))]),
        })
        conn.close()
        print(json.dumps(out, default=str), flush=True)
    return out


def main(argv):
    if len(argv) == 3 and argv[1] == "check-config":
        with open(argv[2], encoding="utf-8") as fh:
            errors = check(json.load(fh))
        for e in errors:
            print(e, file=sys.stderr)
        return 1 if errors else 0
    if len(argv) == 2 and argv[1] == "sync":
        sync(load())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


def application(environ, start_response):
    """The receiver, and the sessions under their path prefix, built on the first request of each gunicorn
    worker."""
    global APP  # pylint: disable=global-statement
    if APP is None:
        APP = build(load())
    return APP(environ, start_response)


def build(config):
    """The WSGI application of a configuration: sessions (when configured) at <path>checkout and <path>portal,
    the webhook receiver at every other path (nginx sends it only the webhook path)."""
    client = api(config)
    receiver = stripe_events.Receiver(config["conninfo"], config["webhook_secrets"], client, config["tolerance"], log)
    conf = config.get("sessions")
    if not conf:
        return receiver
    served = sessions.Sessions(lambda: stripe_events.connect(config["conninfo"]), client, conf, log)
    routes = {conf["path"] + "checkout": "checkout", conf["path"] + "portal": "portal"}

    def app(environ, start_response):
        kind = routes.get(environ.get("PATH_INFO", ""))
        if kind:
            return served(environ, start_response, kind)
        return receiver(environ, start_response)
    return app


APP = None

if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The billing service's configuration check (roles/host_services/files/billing/selfbase_billing.py), which the role runs as the
config file's validate: every error names its field, and what the role's template renders passes."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "roles" / "host_services" / "files" / "billing"))
SPEC = importlib.util.spec_from_file_location("selfbase_billing", ROOT / "roles/host_services/files/billing/selfbase_billing.py")
billing = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(billing)

GOOD = {"conninfo": "host=db dbname=selfbase user=billing_api1", "api_key": "rk_live_x", "api_base": "https://api.stripe.com",
        "api_version": "2026-10-28.endive", "webhook_secrets": ["whsec_a", "whsec_b"], "tolerance": 300,
        "sync": {"reconcile": True, "overlap": 600, "meter_push": True, "meter_api": "v1", "settle": 900,
                 "lookback": 259200, "workers": 8,
                 "metrics_file": "/var/lib/selfbase-billing/metrics.prom"}}

SESSIONS = {"path": "/billing/", "jwt_keys": ["k" * 64], "return_hosts": ["app.example.com", "*.example.com"],
            "currency": "usd", "portal_configuration": ""}


def test_a_good_configuration_passes():
    assert billing.check(json.loads(json.dumps(GOOD))) == []
    assert billing.check(dict(GOOD, sessions=dict(SESSIONS, portal_configuration="bpc_123"))) == []


@pytest.mark.parametrize("change, field", [
    ({"webhook_secrets": []}, "webhook_secrets"),
    ({"webhook_secrets": ["whsec_a", "whsec_b", "whsec_c"]}, "webhook_secrets"),
    ({"webhook_secrets": ["not-a-secret"]}, "webhook_secrets"),
    ({"api_key": "pk_live_x"}, "api_key"),
    ({"tolerance": 0}, "tolerance"),
    # dunning's rules are the database's (platform.billing_policy): a config that still carries them is refused
    ({"policy": {"grace_days": 7, "reactivate_suspended": True}}, "policy"),
    ({"sync": dict(GOOD["sync"], lookback=35 * 86400)}, "sync.lookback"),
    ({"sync": dict(GOOD["sync"], workers="8")}, "sync.workers"),
    ({"sync": dict(GOOD["sync"], meter_api="v3")}, "sync.meter_api"),
    ({"conninfo": None}, "conninfo"),
    ({"extra": 1}, "extra"),
    ({"sessions": dict(SESSIONS, path="billing")}, "sessions.path"),
    ({"sessions": dict(SESSIONS, path="/")}, "sessions.path"),
    ({"sessions": dict(SESSIONS, jwt_keys=["short"])}, "sessions.jwt_keys"),
    ({"sessions": dict(SESSIONS, jwt_keys=[])}, "sessions.jwt_keys"),
    ({"sessions": dict(SESSIONS, return_hosts=[])}, "sessions.return_hosts"),
    ({"sessions": dict(SESSIONS, return_hosts=["https://app.example.com/"])}, "sessions.return_hosts"),
    ({"sessions": dict(SESSIONS, currency="USD")}, "sessions.currency"),
    ({"sessions": dict(SESSIONS, portal_configuration="cfg_1")}, "sessions.portal_configuration"),
    ({"sessions": dict(SESSIONS, tenant="x")}, "sessions.tenant"),
    ({"sessions": dict(SESSIONS, currency=None)}, "sessions.currency"),
    ({"sessions": []}, "sessions"),
])
def test_each_error_names_its_field(change, field):
    errors = billing.check(dict(GOOD, **change))
    assert errors and all(e.startswith(field) for e in errors), errors


def test_the_cli_refuses_a_bad_file(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(GOOD, tolerance=0)))
    assert billing.main(["selfbase_billing.py", "check-config", str(path)]) == 1
    assert "tolerance" in capsys.readouterr().err
    path.write_text(json.dumps(GOOD))
    assert billing.main(["selfbase_billing.py", "check-config", str(path)]) == 0

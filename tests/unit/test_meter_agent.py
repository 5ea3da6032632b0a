"""The metering agent's parser, aggregator, log follower and map renderer
(roles/host_services/files/metering/selfbase-meter), and the map check of selfbase-edge-apply."""

import datetime
import gzip
import importlib.machinery
import importlib.util
import io
import json
import os
import pathlib

import pytest

FILES = pathlib.Path(__file__).resolve().parents[2] / "roles" / "host_services" / "files" / "metering"


def _load(name):
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(FILES / name))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


meter = _load("selfbase-meter")
apply = _load("selfbase-edge-apply")
POLICY = {"untenanted_tenant": "", "unbilled_statuses": {402, 403, 429}}


def line(tenant="acme", status=200, sent=500, at="2026-12-01T10:42:17+00:00", upstream="10.0.0.1:3000", **extra):
    rec = {"time": at, "host": f"{tenant}.example.test", "tenant": tenant, "status": status, "bytes": sent - 100,
           "bytes_sent": sent, "request_length": 80, "upstream": upstream, "request_id": os.urandom(16).hex()}
    rec.update(extra)
    return json.dumps(rec, ensure_ascii=False).encode() + b"\n"


def feed(data, max_lines=10**6, final=False, policy=None):
    batch = meter.Batch(policy or POLICY)
    consumed = meter.read_batch(io.BytesIO(data), batch, max_lines, final)
    return batch, consumed


def feed_batch(*args, **kwargs):
    return feed(*args, **kwargs)[0]


def totals(batch):
    out = {}
    for key, q in batch.usage.items():
        out[key[:2]] = out.get(key[:2], 0) + q
    return out


def test_requests_and_bytes_per_tenant_metric_and_minute():
    data = line() + line(sent=700) + line(tenant="globex", at="2026-12-01T10:43:01+00:00") + line()
    batch, consumed = feed(data)
    assert consumed == len(data) and batch.lines == 4 and batch.malformed == 0
    minute = int(datetime.datetime(2026, 12, 1, 10, 42, tzinfo=datetime.timezone.utc).timestamp())
    assert batch.usage[("acme", "api_requests", minute)] == 3
    assert batch.usage[("acme", "bandwidth_bytes", minute)] == 1700
    assert batch.usage[("globex", "api_requests", minute + 60)] == 1
    assert batch.newest == minute + 60 + 1


def test_offsets_in_other_zones_land_in_the_same_utc_minute():
    batch = feed_batch(line(at="2026-12-01T11:42:05+01:00") + line(at="2026-12-01T10:42:59+00:00"))
    assert len({k[2] for k in batch.usage}) == 1


def test_malformed_lines_are_counted_not_billed():
    data = (b"not json\n" + b'{"tenant": "acme"}\n' + line(tenant="Bad Slug") + line(status="x")
            + line(sent=-5) + b"\xff\xfe\n" + line())
    batch, consumed = feed(data)
    assert consumed == len(data)
    assert batch.malformed == 6 and totals(batch) == {("acme", "api_requests"): 1, ("acme", "bandwidth_bytes"): 500}


def test_a_partial_last_line_waits_for_the_rest():
    whole = line() + line(tenant="globex")
    data = whole + line()[:40]
    batch, consumed = feed(data)
    assert consumed == len(whole) and batch.lines == 2 and batch.malformed == 0


def test_a_partial_last_line_of_a_finished_file_is_counted_malformed():
    data = line() + line()[:40]
    batch, consumed = feed(data, final=True)
    assert consumed == len(data) and batch.lines == 2 and batch.malformed == 1


def test_unicode_hosts_and_escaped_fields_parse():
    data = line(host="bücher.example.test", uri="/é?q=\"x\"") + line(user_agent="\u2603\\")
    batch = feed_batch(data)
    assert batch.malformed == 0 and totals(batch)[("acme", "api_requests")] == 2
    # nginx's escape=json writes non-ASCII as raw UTF-8 bytes; a lone invalid byte is malformed
    batch = feed_batch(line().replace(b"acme.example", b"\xe9.example"))
    assert batch.malformed == 1


def test_max_lines_bounds_a_batch_and_the_rest_is_left():
    data = b"".join(line(tenant=f"t{i:03d}") for i in range(50))
    batch, consumed = feed(data, max_lines=20)
    assert batch.lines == 20 and consumed == len(b"".join(data.splitlines(True)[:20]))
    assert len(batch.usage) == 40


def test_untenanted_requests_are_totalled_and_billed_only_by_policy():
    data = line(tenant="") + line(tenant="", sent=300) + line()
    batch = feed_batch(data)
    assert batch.untenanted == [2, 800]
    assert totals(batch) == {("acme", "api_requests"): 1, ("acme", "bandwidth_bytes"): 500}
    batch = feed_batch(data, policy=dict(POLICY, untenanted_tenant="house"))
    assert totals(batch)[("house", "api_requests")] == 2


def test_what_the_edge_answers_itself_is_not_billed():
    data = line(status=429, upstream="") + line(status=402, upstream="") + line(status=429) + line(status=404, upstream="")
    batch = feed_batch(data)
    assert batch.rejected == 2  # the upstream's own 429 and nginx's 404 count
    assert totals(batch)[("acme", "api_requests")] == 2


def _write(path, data, gz=False):
    with (gzip.open if gz else open)(path, "wb") as fh:
        fh.write(data)


def test_rotated_files_are_found_oldest_first_and_known_by_their_first_line(tmp_path):
    base = tmp_path / "access.json"
    first, second, third = line(), line(), line()
    _write(str(base) + ".2.gz", first + line(), gz=True)
    _write(str(base) + ".1", second)
    _write(str(base), third)
    _write(str(base) + ".bak", line())
    found = meter.candidates(str(base))
    assert [pathlib.Path(f[0]).name for f in found] == ["access.json.2.gz", "access.json.1", "access.json"]
    # the identity survives rename and compression
    _write(str(tmp_path / "copy.gz"), second, gz=True)
    assert meter.identity(str(tmp_path / "copy.gz")) == found[1][1]
    # an empty new log (just rotated, nothing written yet) is not a candidate
    base.write_bytes(b"")
    assert len(meter.candidates(str(base))) == 2


def test_rotation_mid_line_is_read_whole_once_the_writer_finishes(tmp_path):
    path = tmp_path / "access.json"
    head, tail = line()[:30], line()[30:]
    path.write_bytes(line() + head)
    batch = meter.Batch(POLICY)
    with open(path, "rb") as fh:
        consumed = meter.read_batch(fh, batch, 10**6, final=False)
    assert batch.lines == 1
    os.rename(path, str(path) + ".1")  # rotated while a line is half written
    with open(str(path) + ".1", "ab") as fh:
        fh.write(tail)
    batch = meter.Batch(POLICY)
    with open(str(path) + ".1", "rb") as fh:
        fh.seek(consumed)
        assert meter.read_batch(fh, batch, 10**6, final=True) == len(head + tail)
    assert batch.lines == 1 and batch.malformed == 0


RESET = datetime.datetime(2027, 1, 1, tzinfo=datetime.timezone.utc)


def row(slug, status="active", used=None, limit=None, mode=None):
    return dict(slug=slug, status=status, used=used, limit_value=limit, mode=mode,
                period=None if limit is None else "month", reset_at=None if limit is None else RESET)


def test_the_map_blocks_hard_tenants_over_their_limit_only():
    rows = [row("acme", used=100, limit=100, mode="hard"), row("soft", used=500, limit=100, mode="soft"),
            row("near", used=85, limit=100, mode="overage"), row("late", status="suspended"),
            row("due", status="past_due")]
    text = meter.render_map(rows, {"suspended": "402"})
    lines = dict(x.split(" ", 1) for x in text.splitlines())
    assert lines["\\acme"] == '"1;100;0;1798761600;2027-01-01T00:00:00Z;Fri, 01 Jan 2027 00:00:00 GMT;month;";'
    assert lines["\\soft"].startswith('";100;0;') and lines["\\near"].startswith('";100;15;')
    assert lines["\\late"] == '";;;;;;;402";'
    assert "\\due" not in lines  # past_due keeps access unless the policy says otherwise
    assert apply.valid(text) == []


def test_the_remaining_count_moves_in_steps_so_traffic_does_not_reload_nginx_on_every_request():
    def remaining(used, step_percent, limit=100000):
        text = meter.render_map([row("soft", used=used, limit=limit, mode="soft")], {}, step_percent)
        return text.split(";")[2]

    # exact without a step; with 1% of 100,000, the count moves by 1,000 and never overstates what is left
    assert remaining(1501, 0) == "98499"
    assert remaining(1001, 1) == remaining(1999, 1) == "98000" and remaining(2001, 1) == "97000"
    assert remaining(99999, 1) == "0" and remaining(100500, 1) == "0"
    # a small limit keeps a step of one request
    assert remaining(15, 1, limit=100) == "85"
    # whether a hard quota blocks does not depend on the step
    over = meter.render_map([row("hard", used=100000, limit=100000, mode="hard")], {}, 10)
    under = meter.render_map([row("hard", used=99999, limit=100000, mode="hard")], {}, 10)
    assert over.startswith('\\hard "1;') and under.startswith('\\hard ";100000;0;')
    base = ["--map-file=m", "--metrics-file=x"]
    assert meter.parse_args(base + ["--remaining-step-percent=1"]).remaining_step_percent == 1
    assert meter.parse_args(base).remaining_step_percent == 0


@pytest.mark.parametrize("evil", [
    '\\acme "1"; } server { listen 81; } map $x $y { a "b";',
    '\\acme "$request_uri";',
    'include /etc/shadow;',
    '\\acme "a\\";',
])
def test_the_installer_refuses_anything_but_map_entries(evil):
    assert apply.valid('\\ok ";100;0;;;;month;";\n' + evil + "\n") == [2]


def test_the_installer_never_follows_a_planted_link(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0\n")
    (tmp_path / "metrics.prom").symlink_to(secret)
    with pytest.raises(OSError):
        apply.read(str(tmp_path / "metrics.prom"))

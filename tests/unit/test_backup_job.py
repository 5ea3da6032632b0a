"""The backup job runner's metrics (roles/host_services/files/backup/selfbase-backup-job), from a
`pgbackrest info --output=json` document of pgBackRest 2.45."""

import importlib.machinery
import importlib.util
import pathlib
import re

PATH = pathlib.Path(__file__).resolve().parents[2] / "roles" / "host_services" / "files" / "backup" / "selfbase-backup-job"
_loader = importlib.machinery.SourceFileLoader("selfbase_backup_job", str(PATH))
_spec = importlib.util.spec_from_loader("selfbase_backup_job", _loader)
job = importlib.util.module_from_spec(_spec)
_loader.exec_module(job)

INFO = {
    "name": "selfbase", "status": {"code": 0, "message": "ok"},
    "backup": [
        {"type": "full", "timestamp": {"start": 1000, "stop": 1060},
         "info": {"size": 5000, "repository": {"delta": 900, "size": 900}}},
        {"type": "diff", "timestamp": {"start": 2000, "stop": 2010},
         "info": {"size": 5100, "repository": {"delta": 40, "size": 40}}},
    ],
}
VALUE = r'"(?:[^"\\]|\\.)*"'
SAMPLE = re.compile(rf'^[a-z_]+\{{stanza={VALUE}(,[a-z]+={VALUE})*\}} -?[0-9.]+$')


def _samples(text):
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_the_newest_backup_of_any_type_is_the_last_success():
    s = _samples(job.metric_lines("selfbase", INFO, {}))
    assert s['selfbase_backup_last_success_timestamp_seconds{stanza="selfbase"}'] == 2010
    assert s['selfbase_backup_type_last_success_timestamp_seconds{stanza="selfbase",type="full"}'] == 1060
    assert s['selfbase_backup_last_duration_seconds{stanza="selfbase"}'] == 10
    assert s['selfbase_backup_last_repo_size_bytes{stanza="selfbase"}'] == 40
    assert s['selfbase_backup_count{stanza="selfbase"}'] == 2
    assert s['selfbase_backup_stanza_ok{stanza="selfbase"}'] == 1


def test_no_backup_exports_no_timestamp_so_that_backup_missing_fires():
    text = job.metric_lines("selfbase", {"name": "selfbase", "status": {"code": 2}, "backup": []}, {})
    assert "selfbase_backup_last_success_timestamp_seconds" not in text
    assert _samples(text) == {'selfbase_backup_stanza_ok{stanza="selfbase"}': 0}


def test_an_unreadable_repository_is_not_ok():
    assert _samples(job.metric_lines("selfbase", None, {})) == {'selfbase_backup_stanza_ok{stanza="selfbase"}': 0}


def test_job_outcomes_and_the_drill_are_exported():
    state = {"jobs": {"verify": {"exit_code": 1, "start": 1, "end": 5}, "full": {"exit_code": 0, "start": 1, "end": 9}},
             "drill": {"ok": True, "rto_seconds": 12.5, "end": 30}}
    s = _samples(job.metric_lines("selfbase", INFO, state))
    assert s['selfbase_backup_job_success{stanza="selfbase",job="verify"}'] == 0
    assert s['selfbase_backup_job_success{stanza="selfbase",job="full"}'] == 1
    assert s['selfbase_restore_drill_rto_seconds{stanza="selfbase"}'] == 12.5
    assert s['selfbase_restore_drill_success{stanza="selfbase"}'] == 1


def test_every_line_is_valid_exposition_and_labels_are_escaped():
    text = job.metric_lines('we"ird\\', INFO, {"drill": {"ok": False, "rto_seconds": 0, "end": 3}})
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE.match(line), line
    assert 'stanza="we\\"ird\\\\"' in text


SEG = 16 * 1024 * 1024


def _name(segno, timeline=1):
    return f"{timeline:08X}{segno // (0x100000000 // SEG):08X}{segno % (0x100000000 // SEG):08X}"


def test_segment_numbers_run_across_log_files_and_ignore_the_timeline():
    assert job.segment_number("000000010000000000000005", SEG) == 5
    assert job.segment_number("0000000300000002000000FF", SEG) == 2 * 256 + 255
    assert job.segment_number(_name(700, timeline=2), SEG) == 700


def test_a_write_counts_from_the_sample_that_sees_it_until_its_segment_is_archived():
    state = {}
    assert job.archive_lag(state, 100, 10, 5 * SEG + 100, SEG, _name(4)) == (0, 0)   # first sample: nothing known
    assert job.archive_lag(state, 115, 11, 5 * SEG + 900, SEG, _name(4)) == (0, 0)   # a write, after 5*SEG+100
    assert job.archive_lag(state, 130, 11, 5 * SEG + 900, SEG, _name(4)) == (15, 0)
    assert job.archive_lag(state, 190, 11, 5 * SEG + 900, SEG, _name(4)) == (75, 0)   # e.g. after a restart
    assert job.archive_lag(state, 205, 11, 6 * SEG, SEG, _name(5)) == (0, 0)   # switched and archived
    assert state["pending"] == []


def test_an_idle_servers_running_xacts_records_are_no_lag():
    state = {}
    job.archive_lag(state, 0, 10, 5 * SEG + 100, SEG, _name(4))
    job.archive_lag(state, 15, 11, 5 * SEG + 900, SEG, _name(4))
    job.archive_lag(state, 75, 11, 6 * SEG + 40, SEG, _name(5))   # switched; a running-xacts record in segment 6
    for t in range(90, 2000, 15):   # no transaction since: segment 6 is never switched out
        assert job.archive_lag(state, t, 11, 6 * SEG + 40, SEG, _name(5)) == (0, 0)


def test_unarchived_complete_segments_count_and_the_oldest_write_sets_the_age():
    state = {}
    job.archive_lag(state, 0, 10, 5 * SEG, SEG, _name(4))
    job.archive_lag(state, 15, 12, 7 * SEG + 10, SEG, _name(4))   # writes from segment 5 on
    job.archive_lag(state, 30, 20, 9 * SEG + 10, SEG, _name(4))   # more in segment 7
    assert job.archive_lag(state, 45, 20, 9 * SEG + 10, SEG, None) == (30, 4)   # repository unread: last known end
    assert job.archive_lag(state, 60, 20, 9 * SEG + 10, SEG, _name(6)) == (30, 2)   # 5 and 6 archived, 7 not
    assert job.archive_lag(state, 75, 20, 9 * SEG + 10, SEG, _name(8)) == (0, 0)


def test_one_pending_write_is_kept_per_segment():
    state = {}
    job.archive_lag(state, 0, 0, 5 * SEG, SEG, _name(4))
    for i in range(1, 500):
        job.archive_lag(state, i, i, 5 * SEG + i, SEG, _name(4))
    assert state["pending"] == [[1, 5 * SEG]]


def test_a_wal_position_that_goes_back_starts_afresh():
    state = {}
    job.archive_lag(state, 0, 10, 9 * SEG, SEG, _name(8))
    job.archive_lag(state, 15, 11, 9 * SEG + 5, SEG, _name(8))
    assert job.archive_lag(state, 30, 3, 2 * SEG, SEG, _name(1)) == (0, 0)
    assert "pending" in state and state["pending"] == []


def test_the_stanza_options_are_read_from_its_own_section(tmp_path):
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text("[global]\npg1-port=1\n\n[selfbase]\npg1-path=/d\npg1-port=5433\n\n[other]\npg1-port=9\n")
    assert job.stanza_options(str(conf), "selfbase") == {"pg1-path": "/d", "pg1-port": "5433"}


def test_the_drill_configuration_marks_tenant_clusters_as_the_job_reads_them(tmp_path):
    """drill.conf.j2 marks a tenant cluster's stanza; the job finds the mark in that stanza's section only."""
    import jinja2  # noqa: PLC0415
    templates = PATH.parents[3] / "backup" / "templates"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)), trim_blocks=True)
    env.filters["comment"] = lambda text: "# " + text
    env.filters["bool"] = lambda value: str(value).lower() in ("true", "1", "yes")
    text = env.get_template("drill.conf.j2").render(
        ansible_managed="managed", backup_process_max=2, backup_drill_dir="/drill", backup_drill_port=5499,
        backup_repo_type="posix", backup_repo_path="/repo", backup_cipher_type="none",
        _backup_stanzas=[{"stanza": "selfbase", "tenant_cluster": False},
                         {"stanza": "dedicated-1", "tenant_cluster": "True"}])
    conf = tmp_path / "drill.conf"
    conf.write_text(text)
    assert job.EVERY_DATABASE in job.stanza_section(str(conf), "dedicated-1")
    assert job.EVERY_DATABASE not in job.stanza_section(str(conf), "selfbase")
    assert job.stanza_options(str(conf), "dedicated-1") == {
        "pg1-path": "/drill/dedicated-1", "pg1-port": "5499", "pg1-socket-path": "/drill"}

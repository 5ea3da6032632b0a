"""The backup job runner's metrics (roles/backup/files/selfbase-backup-job), from a
`pgbackrest info --output=json` document of pgBackRest 2.45."""

import importlib.machinery
import importlib.util
import pathlib
import re

PATH = pathlib.Path(__file__).resolve().parents[2] / "roles" / "backup" / "files" / "selfbase-backup-job"
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

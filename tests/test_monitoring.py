"""What `make monitoring` creates: metrics over the real log lines, alerts on those metrics, exact commands.

Offline throughout. The webhook's log lines come from the real function (functions-framework's test
client, the emulator for the outcomes that need Firestore); the token and reconcile lines do not exist
on this branch yet, so their documented shape is a literal schema here. Cloud Logging's query language
has no offline parser: `parse_filter` below implements the subset our filters use, from the documented
grammar (NOT binds tightest, then OR, then AND; a comparison on a missing field is false), and refuses
anything else. gcloud's own code (its bundled Python) reads every file and finds unknown fields.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import emulator
import pytest
from clerk_events import envelope, new_user_id, signed_headers, user_event
from conftest import ROOT
from flask.testing import FlaskClient

from clerk_sync import config, transaction

METRICS_DIR = ROOT / "monitoring" / "metrics"
POLICIES_DIR = ROOT / "monitoring" / "policies"
DOCS = ROOT / "docs" / "monitoring.md"
GCLOUD_TIMEOUT_SECONDS = 60
MAKE_TIMEOUT_SECONDS = 30
METRIC_PREFIX = "logging.googleapis.com/user/"
TRACE_FIELD = "logging.googleapis.com/trace"
# Variables the Makefile reads with `?=`: a developer's shell must not change what the tests see.
MAKE_VARIABLES = ("PROJECT", "NOTIFY", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Not the function's secret: a well-formed signature that does not match, the 401 case.
OTHER_SECRET = "whsec_" + "b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzLWxvbmctLQ=="

WEBHOOK_DOCUMENTED = {
    "severity",
    "message",
    "component",
    "svix_id",
    "event_type",
    "clerk_id",
    "outcome",
    "status",
    "latency_ms",
    "reason",
    # ids a transaction body adds when they matter: who holds a contested email, how much a deletion swept
    "claim_owner",
    "claim_taken_from",
    "swept",
}
# Literal schemas (the brief for the restructure): these functions do not log on this branch yet.
TOKEN_DOCUMENTED = {"severity", "message", "component", "clerk_id", "outcome", "status", "latency_ms", "reason"}
RECONCILE_DOCUMENTED = {
    "severity",
    "message",
    "component",
    "mode",
    "outcome",
    "status",
    "latency_ms",
    "drift",
    "conflicts",
    "skipped",
    "reason",
}
# Example lines in those shapes. Token outcome names are not settled; no metric depends on them.
TOKEN_LINES = [
    {"severity": "INFO", "message": "token issued", "component": "token", "clerk_id": "user_t1", "outcome": "issued",
     "status": 200, "latency_ms": 41.0},
    {"severity": "ERROR", "message": "token not issued", "component": "token", "clerk_id": "user_t1",
     "outcome": "unavailable", "status": 503, "latency_ms": 8001.5, "reason": "DeadlineExceeded"},
]  # fmt: skip
RECONCILE_LINES = {
    "in_sync": {"severity": "INFO", "message": "reconcile full: in sync", "component": "reconcile", "mode": "full",
                "outcome": "in_sync", "status": 200, "latency_ms": 5230.0, "drift": 0, "conflicts": 0, "skipped": 0},
    "repaired": {"severity": "WARNING", "message": "reconcile incremental: 3 repaired", "component": "reconcile",
                 "mode": "incremental", "outcome": "repaired", "status": 200, "latency_ms": 812.4, "drift": 3,
                 "conflicts": 0, "skipped": 0},
    "conflicts": {"severity": "WARNING", "message": "reconcile full: 1 conflict left", "component": "reconcile",
                  "mode": "full", "outcome": "conflicts", "status": 200, "latency_ms": 6120.9, "drift": 2,
                  "conflicts": 1, "skipped": 0},
    "stopped": {"severity": "ERROR", "message": "reconcile full: stopped", "component": "reconcile", "mode": "full",
                "outcome": "stopped", "status": 503, "latency_ms": 9000.0, "drift": 0, "conflicts": 0, "skipped": 4,
                "reason": "clerk_unavailable"},
    "needs_a_person": {"severity": "ERROR", "message": "reconcile full: stopped: more than 50 of the 150 users ...",
                       "component": "reconcile", "mode": "full", "outcome": "stopped", "status": 500,
                       "latency_ms": 4100.2, "drift": 0, "conflicts": 0, "skipped": 0, "reason": "mass_deletion"},
}  # fmt: skip
SCHEMAS = {"webhook": WEBHOOK_DOCUMENTED, "token": TOKEN_DOCUMENTED, "reconcile": RECONCILE_DOCUMENTED}

EXPECTED_METRICS = {
    "clerk_sync_requests",
    "clerk_sync_latency",
    "clerk_sync_server_errors",
    "clerk_webhook_bad_signatures",
    "clerk_webhook_conflicts",
    "clerk_reconcile_runs",
    "clerk_reconcile_drift_runs",
    "clerk_reconcile_stops",
}
EXPECTED_POLICIES = {
    "webhook-bad-signatures",
    "server-errors",
    "webhook-conflict-lasting",
    "reconcile-drift",
    "reconcile-stopped",
}
# Svix's retry schedule: each pause follows the previous failed attempt (docs/operations.md "What each answer means").
SVIX_PAUSES_SECONDS = [0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600]


def svix_attempts(first: float = 0.0) -> list[float]:
    """When Svix attempts one message that keeps failing, in seconds from `first`."""
    times, now = [], first
    for pause in SVIX_PAUSES_SECONDS:
        now += pause
        times.append(now)
    return times


# --- the files ------------------------------------------------------------------------------------


def metric_files() -> dict[str, dict[str, Any]]:
    """Every metric definition by name (its file's name, which `make monitoring` passes to gcloud)."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(METRICS_DIR.glob("*.json"))}


def policy_files() -> dict[str, dict[str, Any]]:
    """Every alert policy by its file's name."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(POLICIES_DIR.glob("*.json"))}


def threshold(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy's one threshold condition."""
    (condition,) = policy["conditions"]
    return dict(condition["conditionThreshold"])


def seconds(duration: str) -> int:
    """A protobuf Duration string such as "600s" in seconds."""
    assert re.fullmatch(r"\d+s", duration), duration
    return int(duration[:-1])


# --- a Cloud Logging filter, the subset our metrics use ---------------------------------------------

TOKEN = re.compile(
    r"""\s*(?:
      (?P<paren>[()])
    | (?P<keyword>AND|OR|NOT)(?![\w.])
    | (?P<field>[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)\s*(?P<op>>=|<=|!=|=|>|<)\s*
      (?P<value>"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Comparison:
    """`field op value`, e.g. jsonPayload.status>=500."""

    field: str
    op: str
    value: str | float


@dataclass(frozen=True)
class Node:
    """AND / OR over children, or NOT over one."""

    kind: str
    children: tuple[Node | Comparison, ...]


Expression = Node | Comparison


def tokenize(text: str) -> list[tuple[str, Any]]:
    """Tokens of a filter; anything outside the subset is an error, not silently skipped."""
    tokens: list[tuple[str, Any]] = []
    position = 0
    while text[position:].strip():
        match = TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"cannot read the filter at {text[position:]!r}")
        position = match.end()
        if match["paren"]:
            tokens.append(("paren", match["paren"]))
        elif match["keyword"]:
            tokens.append(("keyword", match["keyword"]))
        else:
            raw = match["value"]
            value: str | float = json.loads(raw) if raw.startswith('"') else float(raw)
            tokens.append(("comparison", Comparison(match["field"], match["op"], value)))
    return tokens


def parse_filter(text: str) -> Expression:
    """Parse with the documented precedence: NOT, then OR, then AND (explicit or a line break)."""
    tokens = tokenize(text)
    position = 0

    def peek() -> tuple[str, Any] | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> tuple[str, Any]:
        nonlocal position
        if position == len(tokens):
            raise ValueError("the filter ends too early")
        position += 1
        return tokens[position - 1]

    def conjunction() -> Expression:
        children = [disjunction()]
        while (token := peek()) is not None and token != ("paren", ")"):
            if token == ("keyword", "AND"):
                take()
            children.append(disjunction())
        return children[0] if len(children) == 1 else Node("AND", tuple(children))

    def disjunction() -> Expression:
        children = [negation()]
        while peek() == ("keyword", "OR"):
            take()
            children.append(negation())
        return children[0] if len(children) == 1 else Node("OR", tuple(children))

    def negation() -> Expression:
        if peek() == ("keyword", "NOT"):
            take()
            return Node("NOT", (negation(),))
        kind, value = take()
        if (kind, value) == ("paren", "("):
            inner = conjunction()
            if take() != ("paren", ")"):
                raise ValueError("unbalanced parentheses")
            return inner
        if kind != "comparison":
            raise ValueError(f"expected a comparison, found {value!r}")
        assert isinstance(value, Comparison)
        return value

    expression = conjunction()
    if position != len(tokens):
        raise ValueError(f"unexpected {tokens[position][1]!r}")
    return expression


def comparisons(expression: Expression) -> list[Comparison]:
    """Every comparison in the filter."""
    if isinstance(expression, Comparison):
        return [expression]
    return [leaf for child in expression.children for leaf in comparisons(child)]


def lookup(entry: dict[str, Any], field: str) -> Any:
    """A LogEntry field by its dotted path; None when any part is missing."""
    value: Any = entry
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def matches(expression: Expression, entry: dict[str, Any]) -> bool:
    """Whether the filter selects the entry. Types must agree: a number field against a number."""
    if isinstance(expression, Node):
        results = [matches(child, entry) for child in expression.children]
        if expression.kind == "NOT":
            return not results[0]
        return all(results) if expression.kind == "AND" else any(results)
    actual = lookup(entry, expression.field)
    if actual is None:
        return False
    wanted = expression.value
    if isinstance(wanted, str):
        assert isinstance(actual, str), f"{expression.field} is {actual!r}, the filter compares it with a string"
        actual, wanted = actual.lower(), wanted.lower()  # string comparisons ignore case
    else:
        assert isinstance(actual, int | float), f"{expression.field} is {actual!r}, the filter compares a number"
        assert not isinstance(actual, bool)
    return bool(OPERATORS[expression.op](actual, wanted))


OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def extractor_field(extractor: str) -> str:
    """The field an `EXTRACT(field)` expression reads; only EXTRACT(jsonPayload.x) is used here."""
    match = re.fullmatch(r"EXTRACT\((jsonPayload\.\w+)\)", extractor)
    assert match, extractor
    return match.group(1)


def extract(extractor: str, entry: dict[str, Any]) -> Any:
    """What `EXTRACT(field)` takes from the entry (None when the field is missing)."""
    return lookup(entry, extractor_field(extractor))


def log_entry(line: dict[str, Any]) -> dict[str, Any]:
    """The LogEntry Cloud Logging makes of one stdout JSON line of a Cloud Run service.

    `severity` and the trace field become the entry's own fields; the rest is jsonPayload.
    """
    payload = {key: value for key, value in line.items() if key not in {"severity", TRACE_FIELD}}
    return {
        "resource": {"type": "cloud_run_revision", "labels": {"service_name": "any-name", "location": "us-central1"}},
        "severity": line["severity"],
        "jsonPayload": payload,
    }


def metric_filter(name: str) -> Expression:
    """A metric's filter, parsed."""
    return parse_filter(metric_files()[name]["filter"])


def counted_by(entry: dict[str, Any]) -> set[str]:
    """The metrics that count the entry."""
    return {name for name, metric in metric_files().items() if matches(parse_filter(metric["filter"]), entry)}


def components_selected(expression: Expression) -> set[str]:
    """Which components the filter's top-level `jsonPayload.component` restriction admits."""
    conjuncts = expression.children if isinstance(expression, Node) and expression.kind == "AND" else (expression,)
    for conjunct in conjuncts:
        leaves = comparisons(conjunct)
        is_disjunction = isinstance(conjunct, Comparison) or conjunct.kind == "OR"
        if is_disjunction and all(leaf.field == "jsonPayload.component" and leaf.op == "=" for leaf in leaves):
            return {str(leaf.value) for leaf in leaves}
    raise AssertionError("the filter does not restrict jsonPayload.component at its top level")


# --- real webhook log lines -----------------------------------------------------------------------


def printed_lines(text: str) -> list[dict[str, Any]]:
    """The JSON lines the function printed."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def post_and_capture(
    client: FlaskClient, capsys: pytest.CaptureFixture[str], body: str, headers: dict[str, str], method: str = "POST"
) -> dict[str, Any]:
    """Send one request to the real function and return the one log line it printed."""
    capsys.readouterr()
    client.open("/", method=method, data=body.encode(), headers=headers)
    (line,) = printed_lines(capsys.readouterr().out)
    return line


def offline_lines(client: FlaskClient, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    """Real lines for every outcome that needs no Firestore: 200, 400, 401, 405, 413, 503, 500."""
    ignored = json.dumps(envelope("session.created", {"id": "sess_1", "user_id": new_user_id(), "object": "session"}))
    user = user_event("user.created", new_user_id())
    lines = {
        "ignored": post_and_capture(client, capsys, ignored, signed_headers(ignored)),
        "unsigned": post_and_capture(client, capsys, user, {"content-type": "application/json"}),
        "bad_signature": post_and_capture(client, capsys, user, signed_headers(user, secret=OTHER_SECRET)),
        "malformed": post_and_capture(client, capsys, "{}", signed_headers("{}")),
        "method_not_allowed": post_and_capture(client, capsys, "", {}, method="GET"),
        "too_large": post_and_capture(client, capsys, "x" * (1024 * 1024 + 1), signed_headers("x")),
    }
    os.environ["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{emulator.free_port()}"  # nobody listens there
    os.environ["FIRESTORE_DEADLINE_SECONDS"] = "1"
    config.reset()
    transaction.reset_client()
    try:
        lines["unavailable"] = post_and_capture(client, capsys, user, signed_headers(user))
    finally:
        transaction.reset_client()
    os.environ["CLERK_WEBHOOK_SIGNING_SECRET"] = ""
    config.reset()
    lines["misconfigured"] = post_and_capture(client, capsys, user, signed_headers(user))
    return lines


@pytest.fixture
def real_lines(app: FlaskClient, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    """The function's own log lines, by case."""
    return offline_lines(app, capsys)


def test_offline_lines_cover_every_status_the_metrics_tell_apart(real_lines: dict[str, dict[str, Any]]) -> None:
    statuses = {case: (line["status"], line["outcome"]) for case, line in real_lines.items()}

    assert statuses == {
        "ignored": (200, "ignored"),
        "unsigned": (400, "rejected"),
        "bad_signature": (401, "rejected"),
        "malformed": (400, "malformed"),
        "method_not_allowed": (405, "method_not_allowed"),
        "too_large": (413, "too_large"),
        "unavailable": (503, "unavailable"),
        "misconfigured": (500, "misconfigured"),
    }


def test_the_webhook_line_is_the_documented_one(real_lines: dict[str, dict[str, Any]]) -> None:
    written = set().union(*(set(line) for line in real_lines.values())) - {TRACE_FIELD}

    assert written <= WEBHOOK_DOCUMENTED
    assert WEBHOOK_DOCUMENTED - written <= {"claim_owner", "claim_taken_from", "swept"}
    assert all(line["component"] == "webhook" for line in real_lines.values())
    for line in real_lines.values():
        assert isinstance(line["status"], int)
        assert isinstance(line["latency_ms"], int | float)


# --- metric definitions ---------------------------------------------------------------------------


def test_every_file_is_json_and_none_is_missing_or_extra() -> None:
    assert set(metric_files()) == EXPECTED_METRICS
    assert set(policy_files()) == EXPECTED_POLICIES
    assert sorted(path.name for path in (ROOT / "monitoring").rglob("*") if path.is_file()) == sorted(
        [f"{name}.json" for name in EXPECTED_METRICS] + [f"{name}.json" for name in EXPECTED_POLICIES]
    )


@pytest.mark.parametrize("name", sorted(EXPECTED_METRICS))
def test_metric_filter_is_cloud_run_and_one_or_more_components(name: str) -> None:
    expression = metric_filter(name)

    assert isinstance(expression, Node)
    assert expression.kind == "AND"
    assert Comparison("resource.type", "=", "cloud_run_revision") in expression.children
    assert components_selected(expression) <= set(SCHEMAS)
    assert "service_name" not in metric_files()[name]["filter"]  # services may have any name


@pytest.mark.parametrize("name", sorted(EXPECTED_METRICS))
def test_metric_names_only_fields_every_selected_line_has(name: str, real_lines: dict[str, dict[str, Any]]) -> None:
    metric = metric_files()[name]
    real_webhook = set().union(*(set(line) for line in real_lines.values()))
    payload_fields = {"webhook": real_webhook, "token": TOKEN_DOCUMENTED, "reconcile": RECONCILE_DOCUMENTED}
    selected = components_selected(metric_filter(name))
    allowed = {"resource.type"} | {
        f"jsonPayload.{field}" for field in set.intersection(*(payload_fields[c] for c in selected)) - {"severity"}
    }
    extractors = [*metric.get("labelExtractors", {}).values(), *filter(None, [metric.get("valueExtractor")])]

    named = {leaf.field for leaf in comparisons(metric_filter(name))} | {extractor_field(e) for e in extractors}

    assert named <= allowed


@pytest.mark.parametrize("name", sorted(EXPECTED_METRICS))
def test_every_label_has_one_extractor_and_distributions_have_buckets(name: str) -> None:
    metric = metric_files()[name]
    descriptor = metric["metricDescriptor"]
    labels = {label["key"] for label in descriptor.get("labels", [])}

    assert descriptor["metricKind"] == "DELTA"
    assert labels == set(metric.get("labelExtractors", {}))
    if descriptor["valueType"] == "DISTRIBUTION":
        assert metric["valueExtractor"].startswith("EXTRACT(")
        bounds = metric["bucketOptions"]["explicitBuckets"]["bounds"]
        assert bounds == sorted(bounds)
        assert bounds[-1] >= 15_000  # Svix gives up after 15 s: slower answers still land in a bucket
    else:
        assert descriptor["valueType"] == "INT64"
        assert "valueExtractor" not in metric
        assert "bucketOptions" not in metric


@functools.cache
def gcloud_sdk() -> tuple[str, str]:
    """gcloud's bundled Python and its SDK root, from `gcloud info` (offline)."""
    info = json.loads(run_gcloud(["info", "--format=json(installation.sdk_root,basic.python_location)"]).stdout)
    return info["basic"]["python_location"], info["installation"]["sdk_root"]


def run_in_gcloud_python(script: str, *arguments: str) -> Any:
    """Run a script in gcloud's bundled Python with gcloud's own libraries importable; its JSON output."""
    python, sdk_root = gcloud_sdk()
    prelude = f"import sys\nsys.path[:0] = [{sdk_root + '/lib'!r}, {sdk_root + '/lib/third_party'!r}]\n"
    result = subprocess.run(
        [python, "-c", prelude + script, *arguments],
        capture_output=True,
        text=True,
        timeout=GCLOUD_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# Reads each file exactly as `gcloud logging metrics create --config-from-file` and `gcloud alpha
# monitoring policies create --policy-from-file` do, then lists the fields and enum values the API
# messages do not know (apitools keeps those aside silently, and the API would refuse them).
GCLOUD_READER = """
import json
from apitools.base.protorpclite import messages
from googlecloudsdk.api_lib.logging import util as logging_util
from googlecloudsdk.api_lib.util import apis
from googlecloudsdk.command_lib.monitoring import util as monitoring_util

def unknown(message, path=""):
    found = [path + name for name in message.all_unrecognized_fields()]
    for field in message.all_fields():
        value = message.get_assigned_value(field.name)
        if isinstance(field, messages.MessageField) and value is not None:
            for item in value if field.repeated else [value]:
                found += unknown(item, path + field.name + ".")
    return found

result = {}
for path in sys.argv[1:]:
    text = open(path).read()
    if "/metrics/" in path:
        message = logging_util.CreateLogMetric("name", data=text)
    else:
        policy = apis.GetMessagesModule("monitoring", "v3").AlertPolicy
        message = monitoring_util.MessageFromString(text, policy, "AlertPolicy")
    result[path] = unknown(message)
print(json.dumps(result))
"""


def test_gcloud_reads_every_file_and_knows_every_field() -> None:
    files = sorted(str(path) for path in (ROOT / "monitoring").rglob("*.json"))

    assert run_in_gcloud_python(GCLOUD_READER, *files) == {path: [] for path in files}


def test_the_gcloud_reader_does_see_unknown_fields_and_values(tmp_path: Path) -> None:
    policy = policy_files()["reconcile-drift"]
    condition = policy["conditions"][0]["conditionThreshold"]
    condition["thresholdValu"] = condition.pop("thresholdValue")
    condition["comparison"] = "COMPARISON_GTE"
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "typo.json").write_text(json.dumps(policy))

    found = run_in_gcloud_python(GCLOUD_READER, str(tmp_path / "policies" / "typo.json"))

    assert sorted(found[str(tmp_path / "policies" / "typo.json")]) == [
        "conditions.conditionThreshold.comparison",
        "conditions.conditionThreshold.thresholdValu",
    ]


# --- the metrics count the real lines -------------------------------------------------------------


def test_each_real_webhook_line_is_counted_by_exactly_the_right_metrics(
    real_lines: dict[str, dict[str, Any]],
) -> None:
    counted = {case: counted_by(log_entry(line)) for case, line in real_lines.items()}
    every_request = {"clerk_sync_requests", "clerk_sync_latency"}
    server_error = every_request | {"clerk_sync_server_errors"}

    assert counted == {
        "ignored": every_request,
        "unsigned": every_request,
        "bad_signature": every_request | {"clerk_webhook_bad_signatures"},
        "malformed": every_request,
        "method_not_allowed": every_request,
        "too_large": every_request,
        "unavailable": server_error,
        "misconfigured": server_error,
    }


def test_labels_and_latency_come_from_the_line_with_the_declared_types(real_lines: dict[str, dict[str, Any]]) -> None:
    metrics = metric_files()
    python_types: dict[str, type | tuple[type, ...]] = {"STRING": str, "INT64": int}
    for line in real_lines.values():
        entry = log_entry(line)
        for name in counted_by(entry):
            metric = metrics[name]
            for label in metric["metricDescriptor"].get("labels", []):
                value = extract(metric["labelExtractors"][label["key"]], entry)
                assert isinstance(value, python_types[label.get("valueType", "STRING")]), (name, label, value)
            if "valueExtractor" in metric:
                assert isinstance(extract(metric["valueExtractor"], entry), int | float)

    requests = metrics["clerk_sync_requests"]["labelExtractors"]
    entry = log_entry(real_lines["bad_signature"])
    assert {key: extract(extractor, entry) for key, extractor in requests.items()} == {
        "component": "webhook",
        "outcome": "rejected",
        "status": 401,
    }


def test_a_real_409_is_counted_per_user_and_applied_lines_are_not(
    client: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    owner, taker = new_user_id(), new_user_id()
    first = user_event("user.created", owner, emails=["held@example.com"])
    second = user_event("user.created", taker, emails=["held@example.com"])
    applied = post_and_capture(client, capsys, first, signed_headers(first))
    conflict = post_and_capture(client, capsys, second, signed_headers(second))
    duplicate = post_and_capture(client, capsys, first, signed_headers(first, message_id=applied["svix_id"]))
    conflicts = metric_files()["clerk_webhook_conflicts"]

    assert (applied["outcome"], conflict["outcome"], duplicate["outcome"]) == ("applied", "conflict", "duplicate")
    assert counted_by(log_entry(conflict)) == {
        "clerk_sync_requests",
        "clerk_sync_latency",
        "clerk_webhook_conflicts",
    }
    assert "clerk_webhook_conflicts" not in counted_by(log_entry(applied))
    assert "clerk_webhook_conflicts" not in counted_by(log_entry(duplicate))
    assert extract(conflicts["labelExtractors"]["clerk_id"], log_entry(conflict)) == taker


def test_token_lines_count_as_requests_and_their_5xx_as_server_errors() -> None:
    ok, failed = (counted_by(log_entry(line)) for line in TOKEN_LINES)

    assert ok == {"clerk_sync_requests", "clerk_sync_latency"}
    assert failed == {"clerk_sync_requests", "clerk_sync_latency", "clerk_sync_server_errors"}


def test_reconcile_runs_are_counted_and_drift_only_when_found() -> None:
    counted = {outcome: counted_by(log_entry(line)) for outcome, line in RECONCILE_LINES.items()}

    assert counted == {
        "in_sync": {"clerk_reconcile_runs"},
        "repaired": {"clerk_reconcile_runs", "clerk_reconcile_drift_runs"},
        "conflicts": {"clerk_reconcile_runs", "clerk_reconcile_drift_runs"},
        "stopped": {"clerk_reconcile_runs"},  # Clerk or Firestore trouble (503): the next run tries again
        "needs_a_person": {"clerk_reconcile_runs", "clerk_reconcile_stops"},
    }
    for line in RECONCILE_LINES.values():
        assert set(line) <= RECONCILE_DOCUMENTED


def test_lines_of_other_services_and_resources_are_not_counted(real_lines: dict[str, dict[str, Any]]) -> None:
    unrelated = log_entry({"severity": "ERROR", "message": "someone else's service", "status": 500, "outcome": "x"})
    local = log_entry(real_lines["bad_signature"])
    local["resource"] = {"type": "global"}

    assert counted_by(unrelated) == set()
    assert counted_by(local) == set()


def test_the_filter_reader_follows_the_documented_precedence_and_refuses_the_unknown() -> None:
    # The Logging docs' own example: "a" OR NOT "b" AND NOT "c" OR "d" is ("a" OR NOT "b") AND (NOT "c" OR "d").
    expression = parse_filter("x.a=1 OR NOT x.b=1 AND NOT x.c=1 OR x.d=1")

    assert matches(expression, {"x": {"a": 1, "c": 0}})
    assert not matches(expression, {"x": {"a": 1, "c": 1}})
    assert matches(parse_filter('x.s="Webhook"\nx.n>=500'), {"x": {"s": "webhook", "n": 503}})
    with pytest.raises(ValueError, match="cannot read"):
        parse_filter("jsonPayload.message:robot")
    with pytest.raises(ValueError, match=r"ends too early"):
        parse_filter('(x.a="b"')


# --- alert policies -------------------------------------------------------------------------------

CONDITION_FILTER = re.compile(
    r'metric\.type="logging\.googleapis\.com/user/(\w+)" AND resource\.type="cloud_run_revision"'
)


def alerted_metric(policy: dict[str, Any]) -> str:
    """The log-based metric a policy's condition reads."""
    condition = threshold(policy)
    match = CONDITION_FILTER.fullmatch(condition["filter"])
    assert match, condition["filter"]
    return match.group(1)


@pytest.mark.parametrize("stem", sorted(EXPECTED_POLICIES))
def test_policy_alerts_on_a_metric_defined_here_by_its_labels(stem: str) -> None:
    policy = policy_files()[stem]
    condition = threshold(policy)
    metric = metric_files().get(alerted_metric(policy))
    assert metric is not None, f"{stem} alerts on {alerted_metric(policy)}, which monitoring/metrics/ lacks"
    labels = {label["key"] for label in metric["metricDescriptor"].get("labels", [])}
    (aggregation,) = condition["aggregations"]

    assert {field.removeprefix("metric.label.") for field in aggregation.get("groupByFields", [])} <= labels
    assert metric["metricDescriptor"]["valueType"] == "INT64"
    assert aggregation["perSeriesAligner"] == "ALIGN_SUM"
    assert aggregation["crossSeriesReducer"] == "REDUCE_SUM"
    assert condition["comparison"] == "COMPARISON_GT"  # the API supports only GT and LT here
    # No log entries means no points: without this an incident stays open until auto-close (7 days).
    assert condition["evaluationMissingData"] == "EVALUATION_MISSING_DATA_INACTIVE"
    assert seconds(condition["duration"]) >= 60  # evaluationMissingData needs a duration of a minute or more
    assert seconds(condition["duration"]) % 60 == 0
    assert policy["userLabels"] == {"clerk_sync_policy": stem}  # how `make monitoring` finds it again
    assert policy["combiner"] == "OR"
    assert "notificationChannels" not in policy  # NOTIFY=... adds them
    assert policy["documentation"]["mimeType"] == "text/markdown"


def documented_policies() -> dict[str, dict[str, str]]:
    """The rows of the alert table in docs/monitoring.md (between two markers), by policy file name."""
    table = DOCS.read_text().split("<!-- alert table -->")[1]
    rows = [line for line in table.strip().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    documented = {}
    for row in rows[2:]:
        cells = dict(zip(header, (cell.strip().strip("`") for cell in row.strip("|").split("|")), strict=True))
        documented[cells["policy file"].removesuffix(".json")] = cells
    return documented


def as_seconds(text: str) -> int:
    """A duration as the docs write it ("10 min", "1 h") in seconds."""
    number, unit = text.split()
    return int(number) * {"min": 60, "h": 3600}[unit]


def test_thresholds_windows_and_durations_are_what_the_docs_say() -> None:
    documented = documented_policies()

    assert set(documented) == EXPECTED_POLICIES
    for stem, policy in policy_files().items():
        row = documented[stem]
        condition = threshold(policy)
        (aggregation,) = condition["aggregations"]
        per = [field.removeprefix("metric.label.") for field in aggregation.get("groupByFields", [])]

        assert row["metric"] == alerted_metric(policy)
        assert as_seconds(row["counted over"]) == seconds(aggregation["alignmentPeriod"])
        assert row["fires when the count is"] == f"> {condition['thresholdValue']:g}"
        assert as_seconds(row["for at least"]) == seconds(condition["duration"])
        assert row["per"] == (", ".join(per) or "all together")


def fires(policy: dict[str, Any], events: list[float], horizon: float = 6 * 3600) -> bool:
    """Whether the condition would open an incident for log entries at these times (seconds).

    A model of Cloud Monitoring's documented semantics, not the service: evaluated once a minute,
    the sum over the last alignment period must exceed the threshold at every evaluation throughout
    `duration`; a window without entries has no data, which counts as not met
    (EVALUATION_MISSING_DATA_INACTIVE).
    """
    condition = threshold(policy)
    window = seconds(condition["aggregations"][0]["alignmentPeriod"])
    duration = seconds(condition["duration"])
    limit = float(condition["thresholdValue"])

    def met(now: float) -> bool:
        return sum(now - window < event <= now for event in events) > limit

    marks = range(duration, int(horizon) + 1, 60)
    return any(all(met(now - back) for back in range(0, duration + 1, 60)) for now in marks)


def test_401_alert_fires_for_one_message_refused_three_times_but_not_a_stray_request() -> None:
    policy = policy_files()["webhook-bad-signatures"]

    assert fires(policy, [t for t in svix_attempts() if t < 3600])  # 0 s, 5 s, 5 min, 35 min
    assert not fires(policy, [0.0])
    assert not fires(policy, [0.0, 5.0])


def test_5xx_alert_waits_for_15_minutes_of_failures_and_ignores_one_failing_message() -> None:
    policy = policy_files()["server-errors"]

    assert fires(policy, [float(t) for t in range(0, 20 * 60, 120)])  # a 5xx every 2 min for 20 min
    assert not fires(policy, [float(t) for t in range(0, 10 * 60, 120)])  # ... for 10 min
    assert not fires(policy, svix_attempts())  # one message's 503s: 0 s, 5 s, 5 min, 35 min, ...


def test_409_alert_fires_when_the_35_minute_retry_still_conflicts() -> None:
    policy = policy_files()["webhook-conflict-lasting"]
    attempts = svix_attempts()  # 0 s, 5 s, 5 min 5 s, 35 min 5 s, 2 h 35 min 5 s, ...

    def conflicts_until(resolved: float) -> list[float]:
        return [t for t in attempts if t < resolved]

    assert not fires(policy, conflicts_until(attempts[2]))  # the 5-minute retry succeeded
    assert not fires(policy, conflicts_until(attempts[3]))  # the 35-minute retry succeeded
    assert fires(policy, conflicts_until(attempts[4]))  # the 35-minute retry conflicted too
    assert fires(policy, attempts)


def test_drift_alert_fires_for_one_run_with_drift() -> None:
    assert fires(policy_files()["reconcile-drift"], [0.0])


def test_stopped_alert_fires_for_one_run_that_waits_for_a_person() -> None:
    assert fires(policy_files()["reconcile-stopped"], [0.0])


POLICY_LOOKUP = """
import json
from googlecloudsdk.core.resource import resource_filter
policies = json.loads(sys.argv[1])
print(json.dumps({
    expression: [policy["displayName"] for policy in policies if resource_filter.Compile(expression).Evaluate(policy)]
    for expression in sys.argv[2:]
}))
"""


def test_the_policy_lookup_make_runs_finds_exactly_its_own_policy() -> None:
    """gcloud's own filter code evaluates each `--filter` that `make monitoring` passes to `policies list`.

    gcloud warns that `=` will come to mean `:` (word matching) for some APIs, so both are checked.
    """
    commands = make_lines("monitoring", "PROJECT=demo-x")[len(EXPECTED_METRICS) :]
    equals = [word.removeprefix("--filter=") for line in commands for word in shlex.split(line)]
    equals = [word for word in equals if word.startswith("userLabels.")]
    has = [expression.replace("=", ":", 1) for expression in equals]
    policies = policy_files()

    selected = run_in_gcloud_python(POLICY_LOOKUP, json.dumps(list(policies.values())), *equals, *has)

    assert selected == {
        f"userLabels.clerk_sync_policy{symbol}{stem}": [policies[stem]["displayName"]]
        for stem in policies
        for symbol in "=:"
    }


# --- make monitoring ------------------------------------------------------------------------------


def make(*arguments: str, extra_environment: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`make --no-print-directory ARGS` in the repo, ignoring the caller's make variables."""
    environment = {name: value for name, value in os.environ.items() if name not in MAKE_VARIABLES}
    return subprocess.run(
        ["make", "--no-print-directory", *arguments],
        cwd=ROOT,
        env={**environment, **(extra_environment or {})},
        capture_output=True,
        text=True,
        timeout=MAKE_TIMEOUT_SECONDS,
        check=False,
    )


def make_lines(*arguments: str) -> list[str]:
    """The shell commands `make -n ARGS` prints, one per line, runs of spaces collapsed."""
    result = make("-n", *arguments)
    assert result.returncode == 0, result.stderr
    return [" ".join(line.split()) for line in result.stdout.replace("\\\n", " ").splitlines() if line.strip()]


def expected_metric_command(name: str) -> str:
    """What `make monitoring PROJECT=demo-x` runs for one metric file."""
    flags = f"--config-from-file=monitoring/metrics/{name}.json --project=demo-x"
    return (
        f"if gcloud logging metrics describe {name} --project=demo-x >/dev/null 2>&1; "
        f"then gcloud logging metrics update {name} {flags}; "
        f"else gcloud logging metrics create {name} {flags}; fi"
    )


def expected_policy_command(stem: str, notify: str = "") -> str:
    """What `make monitoring PROJECT=demo-x [NOTIFY=...]` runs for one policy file."""
    flags = f"--policy-from-file=monitoring/policies/{stem}.json --project=demo-x"
    create_channels = f" --notification-channels={notify}" if notify else ""
    update_channels = f" --set-notification-channels={notify}" if notify else ""
    return (
        "id=$(gcloud alpha monitoring policies list --project=demo-x "
        f"--filter='userLabels.clerk_sync_policy={stem}' --format='value(name)') && "
        f'if [ -z "$id" ]; then gcloud alpha monitoring policies create {flags}{create_channels}; '
        f'else gcloud alpha monitoring policies update "$id" {flags}{update_channels}; fi'
    )


def test_make_monitoring_prints_one_command_per_file_metrics_first() -> None:
    assert make_lines("monitoring", "PROJECT=demo-x") == [
        *(expected_metric_command(name) for name in sorted(EXPECTED_METRICS)),
        *(expected_policy_command(stem) for stem in sorted(EXPECTED_POLICIES)),
    ]


def test_make_monitoring_adds_notification_channels_on_create_and_update() -> None:
    channels = "projects/demo-x/notificationChannels/123,projects/demo-x/notificationChannels/456"

    printed = make_lines("monitoring", "PROJECT=demo-x", f"NOTIFY={channels}")

    assert printed[len(EXPECTED_METRICS) :] == [expected_policy_command(s, channels) for s in sorted(EXPECTED_POLICIES)]


def test_every_printed_command_is_valid_shell() -> None:
    for line in make_lines("monitoring", "PROJECT=demo-x", "NOTIFY=projects/demo-x/notificationChannels/1"):
        result = subprocess.run(["bash", "-n", "-c", line], capture_output=True, text=True, timeout=10, check=False)
        assert result.returncode == 0, (line, result.stderr)


def test_make_monitoring_refuses_without_a_project() -> None:
    result = make("-n", "monitoring")

    assert result.returncode != 0
    assert "PROJECT is not set: run `make monitoring PROJECT=your-gcp-project-id`" in result.stderr
    assert "gcloud" not in result.stdout


# Stands in for gcloud, which needs a real project: records each call; the metrics named in
# $EXISTING exist; a policy lookup prints $POLICY_ID, or fails when $LIST_FAILS is 1.
STAND_IN_GCLOUD = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case "$1 $2 $3" in
  "logging metrics describe") for name in $EXISTING; do [ "$4" = "$name" ] && exit 0; done; exit 1 ;;
esac
case "$1 $2 $3 $4" in
  "alpha monitoring policies list") [ "$LIST_FAILS" = 1 ] && exit 1; echo "$POLICY_ID" ;;
esac
exit 0
"""


def stand_in_environment(
    tmp_path: Path, existing: str = "", policy_id: str = "", list_fails: bool = False
) -> dict[str, str]:
    """Environment variables that put the stand-in gcloud first on PATH; it records calls in tmp_path/calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(STAND_IN_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    (tmp_path / "calls").touch()
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls"),
        "EXISTING": existing,
        "POLICY_ID": policy_id,
        "LIST_FAILS": "1" if list_fails else "0",
    }


def recorded_calls(tmp_path: Path) -> list[list[str]]:
    """The stand-in's calls, split into words."""
    return [shlex.split(line) for line in (tmp_path / "calls").read_text().splitlines()]


def run_make_monitoring_with_stand_in(
    tmp_path: Path, existing: str = "", policy_id: str = "", list_fails: bool = False
) -> tuple[int, list[list[str]]]:
    """Really run `make monitoring` with the stand-in gcloud: the exit code and the calls made."""
    environment = stand_in_environment(tmp_path, existing, policy_id, list_fails)
    result = make("monitoring", "PROJECT=demo-x", extra_environment=environment)
    return result.returncode, recorded_calls(tmp_path)


def changes(calls: list[list[str]]) -> list[tuple[str, str]]:
    """The create and update calls: (verb, metric name), or (verb, policy file or id) for policies."""
    made = []
    for call in calls:
        if call[:2] == ["logging", "metrics"] and call[2] in {"create", "update"}:
            made.append((call[2], call[3]))
        elif call[:3] == ["alpha", "monitoring", "policies"] and call[3] in {"create", "update"}:
            made.append((call[3], call[4]))
    return made


def test_make_monitoring_updates_what_exists_and_creates_what_does_not(tmp_path: Path) -> None:
    """The shell around gcloud decides between create and update; gcloud itself is stood in for."""
    status, calls = run_make_monitoring_with_stand_in(
        tmp_path, existing="clerk_sync_requests clerk_webhook_conflicts", policy_id="projects/demo-x/alertPolicies/42"
    )

    assert status == 0
    assert changes(calls) == [
        ("update" if name in {"clerk_sync_requests", "clerk_webhook_conflicts"} else "create", name)
        for name in sorted(EXPECTED_METRICS)
    ] + [("update", "projects/demo-x/alertPolicies/42")] * len(EXPECTED_POLICIES)


def test_make_monitoring_creates_policies_it_does_not_find(tmp_path: Path) -> None:
    status, calls = run_make_monitoring_with_stand_in(tmp_path)

    assert status == 0
    assert changes(calls) == [("create", name) for name in sorted(EXPECTED_METRICS)] + [
        ("create", f"--policy-from-file=monitoring/policies/{stem}.json") for stem in sorted(EXPECTED_POLICIES)
    ]


def test_make_monitoring_stops_rather_than_duplicate_a_policy_it_could_not_look_up(tmp_path: Path) -> None:
    status, calls = run_make_monitoring_with_stand_in(tmp_path, list_fails=True)

    assert status != 0
    assert [call[:4] for call in calls if call[0] == "alpha"] == [["alpha", "monitoring", "policies", "list"]]


# --- the gcloud commands exist --------------------------------------------------------------------


def gcloud_environment() -> dict[str, str]:
    """gcloud offline and quiet."""
    return {
        **os.environ,
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
    }


def run_gcloud(arguments: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run gcloud for help or local information only, bounded in time."""
    return subprocess.run(
        ["gcloud", *arguments],
        env=gcloud_environment(),
        capture_output=True,
        text=True,
        timeout=GCLOUD_TIMEOUT_SECONDS,
        check=check,
    )


SHELL_WORDS = {";", "&&", "||", "|", ")", "then", "else", "fi", ">/dev/null", "2>&1"}


def gcloud_calls(command: str) -> list[list[str]]:
    """Each `gcloud ...` call in a shell command line, as its words up to the next shell operator."""
    words = shlex.split(command.replace("$(", " ").replace(";", " ; "))
    calls = []
    for index, word in enumerate(words):
        if word == "gcloud":
            call = []
            for following in words[index + 1 :]:
                if following in SHELL_WORDS:
                    break
                call.append(following)
            calls.append(call)
    return calls


def assert_gcloud_knows(call: list[str]) -> None:
    """The call names a gcloud command (not a group) that documents every flag the call passes."""
    words = [word for word in call if not word.startswith("-")]
    result = run_gcloud([*words, "--help"], check=False)  # --help ignores positional arguments
    page = ANSI.sub("", result.stdout)
    assert result.returncode == 0, f"gcloud does not know {' '.join(words)}: {result.stderr[-300:]}"
    name = re.search(r"NAME\n\s+gcloud ([\w -]+?) - ", page)
    assert name, page[:300]
    command = name.group(1).split()
    assert words[: len(command)] == command
    assert not re.search(rf"gcloud {' '.join(command)} (GROUP|COMMAND)", page), f"{command} is a group"
    flags = {word.split("=")[0] for word in call if word.startswith("--")}
    assert sorted(flag for flag in flags if flag not in page and flag.replace("--", "--[no-]") not in page) == []


def distinct_shapes(calls: list[list[str]]) -> list[list[str]]:
    """One call of each command and flag set: the same shape recurs for every file."""
    shapes: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for call in calls:
        command = tuple(word for word in call if not word.startswith("-") and not re.search(r"[_$/]", word))
        flags = tuple(sorted(word.split("=")[0] for word in call if word.startswith("--")))
        shapes.setdefault((command, flags), call)
    return list(shapes.values())


def test_every_gcloud_command_make_monitoring_runs_exists_offline() -> None:
    lines = make_lines("monitoring", "PROJECT=demo-x", "NOTIFY=projects/demo-x/notificationChannels/1")
    calls = distinct_shapes([call for line in lines for call in gcloud_calls(line)])

    assert sorted(" ".join(call[:4]) for call in calls) == [
        "alpha monitoring policies create",
        "alpha monitoring policies list",
        "alpha monitoring policies update",
        "logging metrics create clerk_reconcile_drift_runs",
        "logging metrics describe clerk_reconcile_drift_runs",
        "logging metrics update clerk_reconcile_drift_runs",
    ]
    for call in calls:
        assert_gcloud_knows(call)


def test_policies_exist_only_in_the_alpha_track_of_this_gcloud() -> None:
    """Why the Makefile says `gcloud alpha monitoring policies`: GA and beta have no `policies` here."""
    for track in ([], ["beta"]):
        result = run_gcloud([*track, "monitoring", "policies", "create", "--help"], check=False)
        assert result.returncode != 0
        assert "alpha monitoring policies" in result.stderr


def docs_shell_commands() -> list[str]:
    """Every command line in the docs page's sh blocks (continuations joined, comments dropped)."""
    blocks = re.findall(r"```sh\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.split(" # ")[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_every_gcloud_command_in_the_docs_exists_offline_with_its_flags() -> None:
    calls = distinct_shapes([call for line in docs_shell_commands() for call in gcloud_calls(line)])

    assert len(calls) >= 5
    for call in calls:
        assert_gcloud_knows(call)


def test_every_make_command_in_the_docs_prints_its_commands() -> None:
    makes = [shlex.split(line) for line in docs_shell_commands() if line.startswith("make ")]

    assert makes
    for words in makes:
        assert make_lines(*(word.replace("$PROJECT", "demo-x") for word in words[1:] if word != "-n"))


def test_docs_name_every_metric_and_policy_file() -> None:
    text = DOCS.read_text()

    assert [name for name in sorted(EXPECTED_METRICS) if f"`{name}`" not in text] == []
    assert [stem for stem in sorted(EXPECTED_POLICIES) if f"`{stem}.json`" not in text] == []


def test_the_docs_delete_commands_delete_every_policy_and_metric(tmp_path: Path) -> None:
    """Runs the page's last block as typed (bash, PROJECT set), with the stand-in gcloud."""
    removal = re.findall(r"```sh\n(.*?)```", DOCS.read_text().split("## Change or remove")[1], flags=re.DOTALL)[-1]
    ids = ["projects/demo-x/alertPolicies/1", "projects/demo-x/alertPolicies/2"]
    environment = {**os.environ, **stand_in_environment(tmp_path, policy_id="\n".join(ids)), "PROJECT": "demo-x"}

    result = subprocess.run(
        ["bash", "-e", "-c", removal],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    deletions = [call for call in recorded_calls(tmp_path) if "delete" in call]

    assert result.returncode == 0, result.stderr
    assert deletions == [
        *(["alpha", "monitoring", "policies", "delete", "--quiet", "--project=demo-x", id_] for id_ in ids),
        *(["logging", "metrics", "delete", name, "--quiet", "--project=demo-x"] for name in sorted(EXPECTED_METRICS)),
    ]

"""bench/harness.py's reading of /metrics: a renamed metric or label fails the check that reads it."""

import pytest

from bench.harness import metric

EXPOSITION = """# HELP latent_cnf_requests Requests answered
# TYPE latent_cnf_requests counter
latent_cnf_requests_total{route="/generate",status="200"} 3.0
latent_cnf_requests_total{route="/score",status="200"} 2.0
# HELP latent_cnf_rejected Requests refused
# TYPE latent_cnf_rejected counter
# HELP latent_cnf_nfe Evaluations per call
# TYPE latent_cnf_nfe histogram
latent_cnf_nfe_count{kind="score"} 4.0
latent_cnf_nfe_sum{kind="score"} 256.0
"""


def test_metric_sums_the_samples_whose_labels_match():
    assert metric(EXPOSITION, "latent_cnf_requests_total") == 5
    assert metric(EXPOSITION, "latent_cnf_requests_total", route="/score") == 2
    assert metric(EXPOSITION, "latent_cnf_nfe_sum", kind="score") == 256
    assert metric(EXPOSITION, "latent_cnf_nfe_count", kind="sample") == 0  # no such call yet


def test_a_declared_family_without_samples_reads_zero():
    assert metric(EXPOSITION, "latent_cnf_rejected_total", reason="queue_full") == 0


@pytest.mark.parametrize(
    ("name", "labels", "message"),
    [
        ("latent_cnf_request_total", {}, "no metric family exposes"),
        ("latent_cnf_requests", {}, "no metric family exposes"),  # a counter's samples end in _total
        ("latent_cnf_requests_total", {"code": "200"}, "has labels"),
    ],
)
def test_a_missing_metric_or_label_raises(name, labels, message):
    with pytest.raises(KeyError, match=message):
        metric(EXPOSITION, name, **labels)

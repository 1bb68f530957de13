"""The demo's report of the consumer datasets reads every dataset of the policy from the catalog."""

from __future__ import annotations

import io

from demo.dbt_report import print_consumer_samples
from lake_assets.core import governance


def test_prints_a_sample_of_every_consumer_dataset(built_lake, tmp_path):
    out = io.StringIO()
    found = print_consumer_samples(built_lake.home, limit=3, out=out)
    text = out.getvalue()
    policy = governance.load_policy()
    assert found == sum(len(c.datasets) for c in policy.consumers.values())
    for cname, consumer in policy.consumers.items():
        for dname in consumer.datasets:
            assert f"-- consumer_{cname}.{dname}: " in text
    assert "************1111" in text and "4111111111111111" not in text
    assert "anna.schmidt@example.de" not in text

    empty = io.StringIO()
    assert print_consumer_samples(tmp_path / "empty_lake", out=empty) == 0
    assert "not built yet" in empty.getvalue()

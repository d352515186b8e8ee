"""The "Publish" state as a DISTRIBUTED Map: the ASL fields Step Functions Data Science SDK 2.3.0
predates, applied to the inline Map the SDK builds (:func:`distributed`).

Standard library only: imported by ``workflows.definition`` without the SDK.
"""

from __future__ import annotations

from typing import Any

# How many shard failures the Map tolerates: none. One failed shard fails the run; nothing flips.
TOLERATED_FAILURES = 0
# Where the Map's ResultWriter puts its results (for operators; Commit reads the shards' own reports).
# No trailing slash: Step Functions adds "/<map run id>/" itself.
RESULTS_PREFIX = "publish-results"
# The shard list (processed/shards/serve.json), as the run document's Bucket/Key.
SHARD_LIST = {"Bucket.$": "$.run.publish.shards.Bucket", "Key.$": "$.run.publish.shards.Key"}
MAX_CONCURRENCY_PATH = "$.run.config.publish.max_concurrency"
# Each child's input: its shard entry plus the run-wide values (no child reads the run document);
# the execution's start time makes every shard, and any retry, write the same generated_at/expires_at.
ITEM_SELECTOR = {
    "shard.$": "$$.Map.Item.Value",
    "run_id.$": "$.run.run_id",
    "manifest.$": "$.run.uris.manifest",
    "transform_output.$": "$.run.transform_outputs.serve",
    "vectors.$": "$.run.publish.vectors",
    "reports.$": "$.run.publish.reports",
    "top_n.$": "$.run.config.publish.top_n",
    "ttl_days.$": "$.run.config.publish.version_ttl_days",
    "similar_items.$": "$.run.config.publish.similar_items",
    "started_at.$": "$$.Execution.StartTime",
}


def distributed(state: dict[str, Any], *, result_bucket: str) -> dict[str, Any]:
    """The SDK's inline Map -> the DISTRIBUTED "Publish" Map.

    - ``ItemReader``: the shard list, a JSON array in S3 (:data:`SHARD_LIST`), never through the
      state data (at thousands of shards it would outgrow the 256 KB state limit);
    - ``ItemSelector`` (was ``Parameters``): each child's input;
    - ``ItemProcessor`` (was ``Iterator``) in DISTRIBUTED mode, STANDARD child executions (a child may
      run past EXPRESS's 5 minutes);
    - ``MaxConcurrencyPath``: ``publish.max_concurrency`` from the run's config, a run setting like
      every other (AWS ASL supports the Path form, so does moto 5.2.5);
    - ``ToleratedFailureCount`` 0 (also AWS's default; explicit because moto ignores it and the local
      engine restores it, :mod:`recpipe.local.distributed_map`);
    - ``ResultWriter`` to ``s3://<result_bucket>/publish-results/<map run id>/``: the Map's own output
      stays a few hundred bytes at any shard count. Static on purpose: moto 5.2.5 evaluates
      ResultWriter ``Parameters`` paths against the Map's results, not its input; each Map Run
      writes under its own id anyway.
    """
    out = {key: value for key, value in state.items()
           if key not in ("Iterator", "Parameters", "ItemsPath", "MaxConcurrency")}
    out["ItemReader"] = {
        "Resource": "arn:aws:states:::s3:getObject",
        "ReaderConfig": {"InputType": "JSON"},
        "Parameters": dict(SHARD_LIST),
    }
    out["ItemSelector"] = state["Parameters"]
    out["ItemProcessor"] = {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                            **state["Iterator"]}
    out["MaxConcurrencyPath"] = MAX_CONCURRENCY_PATH
    out["ToleratedFailureCount"] = TOLERATED_FAILURES
    out["ResultWriter"] = {
        "Resource": "arn:aws:states:::s3:putObject",
        "Parameters": {"Bucket": result_bucket, "Prefix": RESULTS_PREFIX},
    }
    return out

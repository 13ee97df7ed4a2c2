"""JSON Schema of ``bench/results/<name>.json`` (``kubetrain-bench/1``); ``python -m bench.schema NAME`` prints one.

The envelope is common; ``results`` has per-benchmark required fields. The
smoke test (tests/bench) validates every benchmark's quick run against these.
"""

from __future__ import annotations

import json
import sys

NUM = {"type": "number"}
SUMMARY = {
    "type": ["object", "null"],
    "required": ["n", "median", "min", "max", "p25", "p75"],
    "properties": {"n": {"type": "integer", "minimum": 1}, "median": NUM, "min": NUM, "max": NUM, "p25": NUM, "p75": NUM,
                   "p99": NUM, "mean": NUM},
}

ENVELOPE = {
    "type": "object",
    "required": ["schema", "benchmark", "question", "quick", "date", "command", "machine", "versions",
                 "load_average_before", "load_average_after", "duration_seconds", "params", "results", "errors"],
    "properties": {
        "schema": {"const": "kubetrain-bench/1"},
        "benchmark": {"type": "string"},
        "question": {"type": "string"},
        "quick": {"type": "boolean"},
        "date": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"},
        "command": {"type": "string"},
        "machine": {"type": "object", "required": ["cpu_model", "cpus", "memory_gib", "gpu"],
                    "properties": {"gpu": {"type": "object", "required": ["cuda", "devices"]}}},
        "versions": {"type": "object", "required": ["kubetrain", "git_commit", "python", "torch"]},
        "load_average_before": {"type": "array", "items": NUM},
        "load_average_after": {"type": "array", "items": NUM},
        "duration_seconds": NUM,
        "params": {"type": "object"},
        "results": {"type": "object"},
        "errors": {"type": "array", "items": {"type": "object", "required": ["where", "message"]}},
    },
}

# One census of the running operator (bench/memory_census.py).
CENSUS = {
    "type": "object",
    "required": ["rss_bytes", "anonymous_bytes", "heap_in_use_bytes", "heap_free_bytes", "pymalloc", "gc_objects",
                 "gc_types", "tasks", "rss_after_trim_bytes"],
    "properties": {
        "rss_bytes": {"type": "integer", "minimum": 1},
        "pymalloc": {"type": "object", "required": ["arenas", "live_bytes", "free_bytes"],
                     "properties": {"live_bytes": {"type": "integer", "minimum": 1}}},
        "gc_types": {"type": "object", "minProperties": 1},
    },
}

RESULTS = {
    "trainer_overhead": {
        "type": "object",
        "required": ["runs", "kubetrain_step_seconds", "plain_step_seconds", "overhead", "target_overhead"],
        "properties": {
            "runs": {"type": "array", "items": {"type": "object", "required": ["side", "index"]}},
            "kubetrain_step_seconds": SUMMARY, "plain_step_seconds": SUMMARY, "overhead": SUMMARY,
        },
    },
    "trainer_modes": {
        "type": "object",
        "required": ["modes", "refused", "device", "world_size"],
        "properties": {
            "modes": {"type": "object", "minProperties": 1, "additionalProperties": {
                "type": "object",
                "required": ["bytes_per_step", "bytes_first_step", "step_seconds", "relative_to_no_compression", "relative_to_fp32"],
                "properties": {"bytes_per_step": NUM, "step_seconds": SUMMARY, "relative_to_no_compression": SUMMARY,
                               "relative_to_fp32": SUMMARY},
            }},
            "refused": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "compression_loss": {
        "type": "object",
        "required": ["modes", "goal", "trade_off", "window", "world_size"],
        "properties": {
            "modes": {"type": "object", "minProperties": 1, "additionalProperties": {
                "type": "object",
                "required": ["label", "runs", "loss_cost", "final_loss", "curve_relative", "curve_steps", "reached",
                             "steps_to_reference", "bytes_per_step_mean", "bytes_per_step_compressed", "saving", "meets_goal"],
                "properties": {"loss_cost": SUMMARY, "final_loss": SUMMARY, "steps_to_reference": SUMMARY,
                               "time_to_reference_relative": SUMMARY, "bytes_per_step_mean": NUM, "saving": NUM,
                               "curve_relative": {"type": "array", "items": NUM}, "meets_goal": {"type": "boolean"},
                               "runs": {"type": "array", "minItems": 1, "items": {
                                   "type": "object", "required": ["seed", "final_loss", "loss_cost", "steps_to_reference"]}}},
            }},
            "trade_off": {"type": "object", "required": ["meeting_goal", "best_cost_at_saving", "best_saving_at_cost"]},
        },
    },
    "trainer_elastic": {
        "type": "object",
        "required": ["events", "summary"],
        "properties": {
            "events": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["profile", "cycle", "event", "seconds", "steps_replayed"],
                "properties": {"event": {"enum": ["node_loss", "scale_up"]}, "seconds": NUM}}},
            "summary": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["seconds", "steps_replayed"],
                "properties": {"seconds": SUMMARY, "steps_replayed": SUMMARY}}},
        },
    },
    "node_loss": {
        "type": "object",
        "required": ["events", "summary"],
        "properties": {
            "events": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["mode", "operator", "cycle", "node", "status_shows_loss_s", "replacement_created_s",
                                               "replacement_running_s", "status_full_again_s"],
                "properties": {"mode": {"enum": ["deleted", "not_ready"]}, "status_shows_loss_s": NUM}}},
            "summary": {"type": "object", "required": ["deleted", "not_ready", "before/deleted"],
                        "additionalProperties": {"type": "object", "additionalProperties": SUMMARY}},
        },
    },
    "control_plane": {
        "type": "object",
        "required": ["runs", "by_size"],
        "properties": {
            "runs": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "required": ["operator", "jobs", "rep", "timed_out", "latency_seconds", "makespan_seconds",
                             "operator_cpu_seconds_burst", "operator_cpu_seconds_steady", "operator_peak_rss_bytes",
                             "operator_requests_burst", "operator_requests_per_job", "operator_request_kinds_burst",
                             "cluster_requests_per_job"],
                "properties": {
                    "operator": {"enum": ["kubetrain", "pytorchjob"]},
                    "latency_seconds": {"type": "object", "required": ["created", "bound", "running"],
                                        "additionalProperties": SUMMARY},
                    "operator_requests_per_job": NUM,
                },
            }},
            "by_size": {"type": "object", "minProperties": 1},
        },
    },
    "operator_memory": {
        "type": "object",
        "required": ["idle", "loaded", "all_running_seconds"],
        "properties": {"idle": CENSUS, "loaded": CENSUS, "all_running_seconds": NUM},
    },
    "sweeps": {
        "type": "object",
        "required": ["runs", "strategies", "headline", "compute_to_reach"],
        "properties": {
            "runs": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["strategy", "seed", "best_loss", "trial_steps", "wall_seconds", "states"],
                "properties": {"trial_steps": {"type": "integer", "minimum": 0}}}},
            "strategies": {"type": "object", "required": ["random", "tpe", "random + asha", "tpe + asha", "pbt"]},
            "compute_to_reach": {"type": "object", "required": ["random", "tpe", "random + asha", "tpe + asha", "pbt"]},
            "headline": {"type": "object", "required": ["tpe_asha_compute_vs_random", "asha_saved_vs_tpe", "goal_met"]},
        },
    },
}


def schema_for(name: str) -> dict:
    env = json.loads(json.dumps(ENVELOPE))
    env["properties"]["benchmark"] = {"const": name}
    env["properties"]["results"] = RESULTS[name]
    return env


if __name__ == "__main__":
    print(json.dumps(schema_for(sys.argv[1]), indent=2))

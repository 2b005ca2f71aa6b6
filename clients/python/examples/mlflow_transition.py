#!/usr/bin/env python3
"""Govern an MLflow model stage transition with aigov.

Before asking MLflow to move a registered model version to a stage
(MlflowClient().transition_model_version_stage), ask aigov whether the
caller may: "transition to Production" is the governed request
model.promote on Model::"<name>" with context environment=production and
the model version. Only an allow goes on to MLflow; a deny or no decision
stops here.

    python3 examples/mlflow_transition.py --gateway http://127.0.0.1:8090 \\
        --token-file .run/tokens/fiona.jwt --model churn-predictor --version 3 --stage Production

Exit status: 0 allowed (and transitioned, with --mlflow), 1 denied,
2 no decision (the gateway or aigov unavailable), 64 bad usage.
Standard library only; MLflow itself is optional (--mlflow).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import aigov  # noqa: E402

#: MLflow's stages and the aigov environment each one means.
STAGES = {"staging": "staging", "production": "production", "archived": "archived"}


def transition_request(model: str, version: str, stage: str):
    """The aigov request governing an MLflow stage transition."""
    env = STAGES.get(stage.lower())
    if env is None:
        raise ValueError("stage %r: MLflow stages are Staging, Production and Archived" % stage)
    return "model.promote", aigov.Resource("Model", model), {"environment": env, "model_version": str(version)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gateway", default=os.environ.get("AIGOV_GATEWAY_URL", "http://127.0.0.1:8090"))
    p.add_argument("--token-file", required=True, help="file holding the caller's OIDC token")
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--stage", required=True, help="Staging, Production or Archived")
    p.add_argument("--request-id", help="idempotency key (default: a new one)")
    p.add_argument("--mlflow", action="store_true", help="on allow, also call MLflow's transition_model_version_stage")
    args = p.parse_args(argv)

    try:
        action, resource, context = transition_request(args.model, args.version, args.stage)
    except ValueError as e:
        print("mlflow_transition: %s" % e, file=sys.stderr)
        return 64
    client = aigov.Client(args.gateway, token_file=args.token_file)
    try:
        d = client.authorize(action, resource, context=context, request_id=args.request_id)
    except aigov.BadRequest as e:
        print("mlflow_transition: bad request: %s" % e, file=sys.stderr)
        return 64
    except aigov.AigovError as e:
        print("mlflow_transition: no decision, not transitioning: %s" % e, file=sys.stderr)
        return 2
    print(json.dumps({"request_id": d.request_id, "decision": d.decision, "code": d.code, "reason": d.reason,
                      "policy_ids": d.policy_ids, "policy_version": d.policy_version, "approval_id": d.approval_id}))
    if not d.allowed:
        print("mlflow_transition: %s version %s to %s denied: %s (%s)" % (args.model, args.version, args.stage, d.code, d.reason),
              file=sys.stderr)
        if d.approval_id:
            print("mlflow_transition: once approved (aigov approvals approve %s), run this again" % d.approval_id, file=sys.stderr)
        return 1
    if args.mlflow:
        from mlflow.tracking import MlflowClient  # optional dependency

        MlflowClient().transition_model_version_stage(name=args.model, version=args.version, stage=args.stage)
    return 0


if __name__ == "__main__":
    sys.exit(main())

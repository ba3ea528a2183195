"""Hooks scripts/schemathesis loads (SCHEMATHESIS_HOOKS): they keep out two kinds of request
that test schemathesis, not the hub."""

import json

import schemathesis

# Longest a direct method call may wait in this run, in seconds. No device is connected, so a
# call waits connectTimeoutInSeconds (up to 300) and the answer says only that none came; the
# hub's handling of the timeouts is covered by its own tests.
MAX_METHOD_WAIT = 5


@schemathesis.hook
def map_path_parameters(context, path_parameters):
    # Ids may hold '%', but schemathesis reads a generated "%0C" as already percent-encoded and
    # sends it as is, so the hub (rightly) decodes a form feed from it. Escaping the '%' first
    # makes the hub see the id that was generated.
    return {
        k: v.replace("%", "%25") if isinstance(v, str) else v
        for k, v in (path_parameters or {}).items()
    }


@schemathesis.hook
def filter_case(context, case):
    if not case.path.endswith("/methods") or not isinstance(case.body, dict):
        return True
    wait = case.body.get("connectTimeoutInSeconds", 0)
    return not isinstance(wait, int) or wait <= MAX_METHOD_WAIT


@schemathesis.deserializer("application/vnd.microsoft.iothub.feedback.json")
def feedback_batch(ctx, response):
    # Azure's feedback batches are JSON under a media type of their own: read them as JSON so
    # their schema is checked too.
    return json.loads(response.content)

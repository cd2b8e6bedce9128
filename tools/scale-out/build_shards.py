#!/usr/bin/env python3
"""Builds the N shards of a Fathom index as tasks of a Ray cluster (issue 24, item 2).

Each task runs one shard build, `fathom build --input FILE --model MODEL --shard i/N --output
OUT/shard-i`, and with --upload then pushes it, `fathom push --index OUT/shard-i --to
s3://BUCKET/PREFIX/shard-i --endpoint URL`. A task whose command exits non-zero raises, and
Ray runs it again (`max_retries`, `retry_exceptions`): the retries are the engine's. A rerun
of a shard build resumes or restarts it (fathom build holds a lock and publishes atomically),
and a push rewrites the same objects, manifest last, so a retried task is safe.

Commands are templates (--build-command, --push-command) split like a shell line *before*
the placeholders are filled, so paths with spaces stay one argument. Placeholders: {fathom}
{input} {model} {i} {n} {shard} (= i/N) {output} {threads}; the push template also has
{index} {to} {endpoint}. The default build template is the sharded CLI of issue 24; until it
is on main, give a stand-in (tools/scale-out/smoke.sh does).

Progress goes to stderr, the result (one JSON object: shards, outputs, attempts, seconds) to
stdout. Exit status 0 when every shard succeeded, 1 otherwise (the failures are listed).
docs/scale-out.md, "Building shards with Ray".
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time

DEFAULT_BUILD = "{fathom} build --input {input} --model {model} --shard {shard} --output {output} --threads {threads} --quiet"
DEFAULT_PUSH = "{fathom} push --index {index} --to {to} --endpoint {endpoint} --quiet"


def fill(template, values):
    """Splits the template like a shell line, then fills each word's {placeholders} (other
    braces, e.g. a shell's { ...; }, are left alone)."""
    sub = lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0)
    return [re.sub(r"\{(\w+)\}", sub, word) for word in shlex.split(template)]


def run_shard(spec):
    """One shard: build, then push. Raises on a non-zero exit so that Ray retries the task."""
    started = time.time()
    attempt_file = os.path.join(spec["work"], "shard-%04d.attempts" % spec["i"])
    # Counts the tries the engine made of this shard (for the report; Ray does the retrying).
    with open(attempt_file, "a") as f:
        f.write("%d\n" % os.getpid())
    with open(attempt_file) as f:
        attempt = sum(1 for _ in f)
    steps = [("build", spec["build"])]
    if spec.get("push"):
        steps.append(("push", spec["push"]))
    for name, argv in steps:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise RuntimeError("shard %d/%d: %s failed with exit status %d (try %d): %s\nstderr: %s" % (
                spec["i"], spec["n"], name, p.returncode, attempt, shlex.join(argv), p.stderr.strip()[-2000:]))
    return {"shard": spec["i"], "output": spec["output"], "uploaded_to": spec.get("to"),
            "attempts": attempt, "seconds": round(time.time() - started, 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fathom", required=True, help="path of the fathom binary (every node must have it at this path)")
    ap.add_argument("--input", required=True, help="input vectors, the same file for every shard")
    ap.add_argument("--model", help="shared model directory from `fathom train` (default template needs it)")
    ap.add_argument("--shards", type=int, required=True, help="N, the number of shards")
    ap.add_argument("--output-dir", required=True, help="shard i is built into OUTPUT_DIR/shard-i (4 digits)")
    ap.add_argument("--only", help="comma-separated shard numbers to build (default: all N)")
    ap.add_argument("--threads", type=int, default=1, help="--threads of each build; each task asks Ray for this many CPUs")
    ap.add_argument("--upload", help="push each shard to s3://BUCKET/PREFIX/shard-i after its build")
    ap.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"), help="S3 endpoint for --upload (default $AWS_ENDPOINT_URL)")
    ap.add_argument("--build-command", default=DEFAULT_BUILD, help="build template (default: %(default)s)")
    ap.add_argument("--push-command", default=DEFAULT_PUSH, help="push template (default: %(default)s)")
    ap.add_argument("--max-retries", type=int, default=3, help="Ray's retries of a failed task (default 3)")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                    help="Ray cluster to join (e.g. 127.0.0.1:6379 from `ray start --head`); default $RAY_ADDRESS, else a local cluster")
    args = ap.parse_args(argv)

    if args.shards < 1:
        ap.error("--shards must be at least 1")
    if "{model}" in args.build_command and not args.model:
        ap.error("the build template uses {model}: give --model MODEL_DIR (from `fathom train`)")
    if args.upload and not args.upload.startswith("s3://"):
        ap.error("--upload must be s3://BUCKET/PREFIX")
    if args.upload and not args.endpoint:
        ap.error("--upload needs --endpoint URL (or AWS_ENDPOINT_URL)")
    fathom = os.path.abspath(args.fathom)
    if not os.access(fathom, os.X_OK):
        ap.error("--fathom %s is not an executable file" % args.fathom)
    shards = list(range(args.shards)) if not args.only else sorted({int(x) for x in args.only.split(",")})
    if any(i < 0 or i >= args.shards for i in shards):
        ap.error("--only: shard numbers run from 0 to %d" % (args.shards - 1))

    out_dir = os.path.abspath(args.output_dir)
    work = os.path.join(out_dir, ".build_shards")
    os.makedirs(work, exist_ok=True)
    for i in shards:
        try:
            os.remove(os.path.join(work, "shard-%04d.attempts" % i))
        except FileNotFoundError:
            pass

    specs = []
    for i in shards:
        output = os.path.join(out_dir, "shard-%04d" % i)
        values = {"fathom": fathom, "input": os.path.abspath(args.input), "model": os.path.abspath(args.model) if args.model else "",
                  "i": i, "n": args.shards, "shard": "%d/%d" % (i, args.shards), "output": output, "threads": args.threads}
        spec = {"i": i, "n": args.shards, "output": output, "work": work, "build": fill(args.build_command, values)}
        if args.upload:
            to = args.upload.rstrip("/") + "/shard-%04d" % i
            spec["to"] = to
            spec["push"] = fill(args.push_command, dict(values, index=output, to=to, endpoint=args.endpoint))
        specs.append(spec)

    if not args.address:
        # A local instance of one node: keep every Ray port on loopback (Ray otherwise binds
        # the machine's routable address; this switch is the one Ray reads for that).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # stdout is for the result only: Ray prints task-failure notes on the driver's stdout, so
    # while Ray runs, file descriptor 1 points at stderr.
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    import ray  # imported here so that --help works without Ray

    # The tasks see the driver's object-store credentials whichever node runs them.
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    ray.init(address=args.address, runtime_env={"env_vars": env} if env else None,
             include_dashboard=False, logging_level="warning", log_to_driver=False)
    task = ray.remote(num_cpus=args.threads, max_retries=args.max_retries, retry_exceptions=True)(run_shard)

    started = time.time()
    pending = {task.remote(s): s for s in specs}
    results, failures = [], []
    sys.stderr.write("build_shards: %d shard(s) of %d on Ray (%s), max_retries %d\n" % (
        len(specs), args.shards, ray.get_runtime_context().gcs_address, args.max_retries))
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        ref = ready[0]
        spec = pending.pop(ref)
        try:
            r = ray.get(ref)
            results.append(r)
            sys.stderr.write("build_shards: shard %d done in %.1f s (%d tr%s)  [%d/%d]\n" % (
                r["shard"], r["seconds"], r["attempts"], "y" if r["attempts"] == 1 else "ies", len(results) + len(failures), len(specs)))
        except Exception as e:  # the task failed max_retries + 1 times
            msg = str(e).strip().splitlines()
            failures.append({"shard": spec["i"], "error": "\n".join(msg[-12:])})
            sys.stderr.write("build_shards: shard %d FAILED after %d tries\n" % (spec["i"], args.max_retries + 1))
    ray.shutdown()
    results.sort(key=lambda r: r["shard"])
    sys.stdout.flush()
    with os.fdopen(result_fd, "w") as out:
        out.write(json.dumps({"shards": args.shards, "built": results, "failed": failures,
                              "seconds": round(time.time() - started, 3)}, sort_keys=True) + "\n")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())

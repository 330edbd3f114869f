"""`aegis sandbox demo`: the examples, made real in the sandbox, shown as a user sees them.

The demo is a list of named steps; each returns ok or failed with a message, and a summary
table ends the run. The steps are in :mod:`aegis.sandbox.demo_steps` (append one to its
:data:`STEPS` to grow the story), the rendering in :mod:`aegis.sandbox.demo_render`.

The examples in ``examples/`` name placeholder hosts, buckets and credentials. They are not
edited: :func:`render_documents` substitutes the sandbox's real endpoints into the parsed
YAML and writes the result to ``<dir>/manifests/`` (mode 0600: it holds the sandbox's
throwaway credentials), which is then applied with the real ``kubectl``.
"""

from __future__ import annotations

import time
from pathlib import Path

from aegis.sandbox.demo_render import SandboxEndpoints, invalid_policies, render_documents
from aegis.sandbox.demo_steps import STEPS, DemoContext, Step, StepResult, heading
from aegis.sandbox.environment import DEFAULT_DIR, down, print_usage, up

__all__ = ["STEPS", "SandboxEndpoints", "invalid_policies", "render_documents", "run_demo"]


# --------------------------------------------------------------------------- driver


def default_examples_dir() -> Path:
    import aegis

    # operator/aegis/__init__.py → the checkout's examples/.
    return Path(aegis.__file__).resolve().parents[2] / "examples"


def run_steps(ctx: DemoContext, steps: list[Step]) -> list[tuple[str, StepResult, float]]:
    results = []
    for step in steps:
        heading(step.name)
        started = time.monotonic()
        try:
            result = step.run(ctx)
        except Exception as error:  # a broken step is reported, and the rest still runs
            result = StepResult(False, f"{type(error).__name__}: {error}")
        results.append((step.name, result, time.monotonic() - started))
        print(f"-> {'ok' if result.ok else 'FAILED'}: {result.message}", flush=True)
    return results


def print_summary(results: list[tuple[str, StepResult, float]]) -> None:
    heading("summary")
    width = max(len(name) for name, _, _ in results)
    for name, result, took in results:
        mark = "ok    " if result.ok else "FAILED"
        print(f"  {mark} {name:<{width}} {took:5.1f}s  {result.message}")


def run_demo(
    sandbox_dir: Path = DEFAULT_DIR, *, check: bool = False, examples_dir: Path | None = None
) -> int:
    from kubernetes import config

    started = time.monotonic()
    sandbox_dir = sandbox_dir.resolve()
    examples_dir = (examples_dir or default_examples_dir()).resolve()
    heading("sandbox up")
    state = up(sandbox_dir, quiet=True)
    try:
        print(
            f"Kubernetes API emulator {state.api_url}, operator, Job runner, PostgreSQL "
            f"primary + standby, Redis, moto S3/Route53: all on 127.0.0.1"
        )
        ctx = DemoContext(
            state=state,
            sandbox_dir=sandbox_dir,
            examples_dir=examples_dir,
            check=check,
            manifests_dir=sandbox_dir / "manifests",
            api=config.new_client_from_config(config_file=state.kubeconfig),
        )
        results = run_steps(ctx, STEPS)
        print_summary(results)
        failed = [name for name, result, _ in results if not result.ok]
        print(
            f"\n{len(results) - len(failed)}/{len(results)} steps ok in "
            f"{time.monotonic() - started:.0f}s"
        )
        if not check:
            heading("the sandbox keeps running")
            print_usage(state)
        return 1 if failed else 0
    finally:
        if check:
            heading("sandbox down")
            down(sandbox_dir)


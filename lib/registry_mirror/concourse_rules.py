"""Concourse's load-time rules for a pipeline, as `fly set-pipeline` applies them, read from its source.

Each rule names where Concourse applies it (paths in github.com/concourse/concourse):
- atc/config.go `UnmarshalConfig`: top-level keys outside Concourse's are dropped, but everything below
  is decoded with `yaml.UnmarshalStrict` (sigs.k8s.io/yaml over go-yaml v2), which refuses unknown keys
  in resources, resource types, jobs and groups, and a key set twice in one mapping (a key a `<<:` merge
  brought in may be overridden: go-yaml allows that);
- atc/configvalidate/validate.go: duplicate names ("resources[0] and resources[1] have the same name"),
  `validateGroups` (unknown job globs, a job in no group when groups exist, unknown resources,
  duplicate groups), `validateResourcesUnused` ("resource 'x' is not used"), `validateCycle` (a cycle of
  `passed:` constraints);
- atc/steps.go: each step is decoded strictly by its kind (modifiers first), so a key that kind does not
  have (`trigger` on a put, a `get` and a `put` in one step) is refused;
- atc/step_validator.go: a `get` name repeated in one job ("repeated name"), unknown resources, `passed:`
  globs that match no job or a job that never gets or puts the resource, a task with both or neither of
  `file:` and `config:`.
Messages follow Concourse's where it has one, so a finding can be searched for in its source.
"""
from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterator
from typing import Any

import yaml

RESOURCE_KEYS = {"name", "old_name", "public", "webhook_token", "type", "source", "check_every", "check_timeout",
                 "tags", "version", "icon", "expose_build_created_by"}
RESOURCE_TYPE_KEYS = {"name", "type", "source", "defaults", "privileged", "check_every", "tags", "params"}
JOB_KEYS = {"name", "old_name", "public", "disable_manual_trigger", "disable_reruns", "serial", "interruptible",
            "serial_groups", "max_in_flight", "tags", "build_logs_to_retain", "build_log_retention", "on_success",
            "on_failure", "on_abort", "on_error", "ensure", "plan"}
GROUP_KEYS = {"name", "jobs", "resources"}
HOOKS = ("on_success", "on_failure", "on_error", "on_abort", "ensure")
# atc/steps.go: a step is decoded in StepPrecedence order, modifiers first, then the first core kind;
# what neither the modifiers nor that kind's struct knows is an unknown field (the config is refused).
MODIFIERS = {*HOOKS, "across", "attempts", "timeout"}
CORE_STEPS = {
    "run": {"run", "type", "params", "privileged", "tags", "container_limits"},
    "task": {"task", "privileged", "hermetic", "file", "container_limits", "config", "params", "vars", "tags",
             "input_mapping", "output_mapping", "image"},
    "put": {"put", "resource", "params", "inputs", "tags", "get_params", "no_get"},
    "get": {"get", "resource", "version", "params", "passed", "trigger", "tags"},
    "set_pipeline": {"set_pipeline", "file", "team", "vars", "var_files", "instance_vars"},
    "load_var": {"load_var", "file", "format", "reveal"},
    "try": {"try"},
    "do": {"do", "tags"},
    "in_parallel": {"in_parallel", "tags"},
}


def load_rules(text: str) -> list[str]:
    """Every load error Concourse would give `text` (a pipeline's YAML)."""
    problems = duplicate_keys(text)
    config = yaml.safe_load(text) or {}
    problems += unknown_keys(config)
    problems += duplicate_names(config)
    problems += group_rules(config)
    problems += unused_resources(config)
    problems += step_rules(config)
    problems += passed_cycles(config)
    return problems


def duplicate_keys(text: str) -> list[str]:
    found: list[str] = []

    class Strict(yaml.SafeLoader):
        pass

    def check(loader: Strict, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                found.append(f"line {key_node.start_mark.line + 1}: key {key!r} is set twice in one mapping "
                             f"(first on line {seen[key]}): Concourse's strict YAML decoding refuses it")
            else:
                seen[key] = key_node.start_mark.line + 1
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, check)
    yaml.load(text, Loader=Strict)  # noqa: S506 - a SafeLoader subclass
    return found


def unknown_keys(config: dict[str, Any]) -> list[str]:
    problems = []
    for section, allowed in (("resources", RESOURCE_KEYS), ("resource_types", RESOURCE_TYPE_KEYS),
                             ("jobs", JOB_KEYS), ("groups", GROUP_KEYS)):
        for index, item in enumerate(config.get(section) or []):
            extra = sorted(set(item) - allowed) if isinstance(item, dict) else []
            if extra:
                problems.append(f"{section}[{index}] ({item.get('name')}): unknown field(s) {', '.join(extra)}")
    return problems


def duplicate_names(config: dict[str, Any]) -> list[str]:
    problems = []
    for section in ("resources", "resource_types", "jobs", "groups"):
        first: dict[str, int] = {}
        for index, item in enumerate(config.get(section) or []):
            name = item.get("name")
            if name in first:
                problems.append(f"{section}[{first[name]}] and {section}[{index}] have the same name ('{name}')")
            else:
                first[name] = index
    return problems


def group_rules(config: dict[str, Any]) -> list[str]:
    groups = config.get("groups") or []
    jobs = [j.get("name") for j in config.get("jobs") or []]
    resources = {r.get("name") for r in config.get("resources") or []}
    problems, grouped = [], set()
    for group in groups:
        for pattern in group.get("jobs") or []:
            matched = [j for j in jobs if fnmatch.fnmatchcase(j, pattern)]
            grouped |= set(matched)
            if not matched:
                problems.append(f"no jobs match '{pattern}' for group '{group.get('name')}'")
        for resource in group.get("resources") or []:
            if resource not in resources:
                problems.append(f"group '{group.get('name')}' has unknown resource '{resource}'")
    for name, count in Counter(g.get("name") for g in groups).items():
        if count > 1:
            problems.append(f"group '{name}' appears {count} times. Duplicate names are not allowed.")
    if groups:
        problems += [f"job '{job}' belongs to no group" for job in jobs if job not in grouped]
    return problems


def unused_resources(config: dict[str, Any]) -> list[str]:
    used = {_resource(s) for job in config.get("jobs") or [] for s in job_steps(job) if "get" in s or "put" in s}
    return [f"resource '{r.get('name')}' is not used" for r in config.get("resources") or [] if r.get("name") not in used]


def step_rules(config: dict[str, Any]) -> list[str]:
    jobs = config.get("jobs") or []
    resources = {r.get("name") for r in config.get("resources") or []}
    problems = []
    for index, job in enumerate(jobs):
        where = f"jobs.{job.get('name')}"
        seen_gets: set[str] = set()
        for step in job_steps(job):
            problems += _step_fields(where, step)
            if "get" in step:
                if step["get"] in seen_gets:
                    problems.append(f"{where}: .get({step['get']}): repeated name")
                seen_gets.add(step["get"])
            for kind in ("get", "put"):
                if kind in step and _resource(step) not in resources:
                    problems.append(f"{where}: .{kind}({step[kind]}): unknown resource '{_resource(step)}'")
            if "get" in step:
                problems += _passed(where, step, jobs)
            if "task" in step:
                if "file" in step and "config" in step:
                    problems.append(f"{where}: .task({step['task']}): must specify one of `file:` or `config:`, "
                                    "not both")
                elif "file" not in step and "config" not in step:
                    problems.append(f"{where}: .task({step['task']}): must specify either `file:` or `config:`")
    return problems


def passed_cycles(config: dict[str, Any]) -> list[str]:
    jobs = {j.get("name"): j for j in config.get("jobs") or []}
    upstream = {name: {u for s in job_steps(job) if "get" in s for p in s.get("passed") or []
                       for u in jobs if fnmatch.fnmatchcase(u, p)} for name, job in jobs.items()}
    state: dict[str, str] = {}

    def visit(name: str) -> str | None:
        if state.get(name) == "visiting":
            return name
        if state.get(name) == "done":
            return None
        state[name] = "visiting"
        for up in sorted(upstream[name]):
            if (found := visit(up)) is not None:
                return found
        state[name] = "done"
        return None

    for name in jobs:
        if (start := visit(name)) is not None:
            return [f"pipeline contains a cycle that starts at Job '{start}' (passed: constraints)"]
    return []


def job_steps(job: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every step of a job: its plan, nested steps and hooks, the job's own hooks."""
    yield from walk(job.get("plan") or [])
    for hook in HOOKS:
        if isinstance(job.get(hook), dict):
            yield from walk([job[hook]])


def walk(steps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for step in steps:
        if not isinstance(step, dict):
            continue
        yield step
        nested = step.get("in_parallel")
        if isinstance(nested, dict):
            nested = nested.get("steps", [])
        for inner in (nested or []), step.get("do") or [], [step["try"]] if "try" in step else []:
            yield from walk(inner)
        for hook in HOOKS:
            if isinstance(step.get(hook), dict):
                yield from walk([step[hook]])


def _step_fields(where: str, step: dict[str, Any]) -> list[str]:
    kind = next((k for k in CORE_STEPS if k in step), None)
    if kind is None:
        return [f"{where}: a step ({', '.join(sorted(map(str, step)))}) declares no core step (get, put, task, ...)"]
    allowed = MODIFIERS | CORE_STEPS[kind] | ({"fail_fast"} if "across" in step else set())
    extra = sorted(set(step) - allowed)
    return [f"{where}: .{kind}({step[kind]}): unknown fields {extra}"] if extra else []


def _resource(step: dict[str, Any]) -> str:
    return step.get("resource") or step.get("get") or step.get("put")


def _passed(where: str, step: dict[str, Any], jobs: list[dict[str, Any]]) -> list[str]:
    problems, resource = [], _resource(step)
    for pattern in step.get("passed") or []:
        matched = [j for j in jobs if fnmatch.fnmatchcase(j.get("name", ""), pattern)]
        if not matched:
            problems.append(f"{where}: .get({step['get']}).passed: no matching job(s) for '{pattern}'")
        for job in matched:
            if not any(_resource(s) == resource for s in job_steps(job) if "get" in s or "put" in s):
                problems.append(f"{where}: .get({step['get']}).passed: job '{job['name']}' does not interact with "
                                f"resource '{resource}'")
    return problems

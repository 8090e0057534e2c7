"""A small evaluator of IAM identity policies: does this document allow this request?

It answers for one request (an action on one resource, with the request's condition keys) the
way IAM evaluates identity policies: an explicit Deny wins, else any Allow statement whose
Action, Resource and every Condition match allows, else the request is implicitly denied.

Supported, because the pipeline policy uses it or a reasonable edit of it would:
  * Action: exact names, case-insensitive, with `*` / `?` wildcards; Resource: ARN patterns with
    `*` (any run of characters, `:` and `/` included) and `?` (one character).
  * Condition operators StringEquals, StringNotEquals, StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase, StringLike, StringNotLike, each also with the `IfExists` suffix and
    the `ForAllValues:` / `ForAnyValue:` set prefixes; and Null. Keys of one block are ANDed,
    the values listed for one key are ORed; condition key names are case-insensitive.
Anything else (NotAction, NotResource, Numeric/Date/Bool/Arn/IpAddress operators, policy
variables such as `${aws:username}`, a single-value operator on a multi-valued key) raises
Unsupported: a check that quietly allowed what it cannot read would prove nothing.

Libraries looked at first: policyuniverse (expands and classifies actions, summarises a
statement's conditions; it does not decide a request), parliament and cloudsplaining (lint a
document and rate its risk; no request evaluation). The one simulator found that evaluates
conditions against a request, @cloud-copilot/iam-simulate, is a Node/TypeScript library, and
AWS's own simulator (iam:SimulatePrincipalPolicy / SimulateCustomPolicy) is an AWS API call,
which tests must not make. Hence these few lines.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping, Union

ContextValue = Union[str, tuple[str, ...]]

ALLOW, IMPLICIT_DENY, EXPLICIT_DENY = "allow", "implicit deny", "explicit deny"

# operator -> (compare one request value with one policy value, negated?)
_STRING_OPERATORS = {
    "StringEquals": (lambda have, want: have == want, False),
    "StringNotEquals": (lambda have, want: have == want, True),
    "StringEqualsIgnoreCase": (lambda have, want: have.lower() == want.lower(), False),
    "StringNotEqualsIgnoreCase": (lambda have, want: have.lower() == want.lower(), True),
    "StringLike": (lambda have, want: _glob(want).fullmatch(have) is not None, False),
    "StringNotLike": (lambda have, want: _glob(want).fullmatch(have) is not None, True),
}


class Unsupported(ValueError):
    """The document uses something this evaluator does not evaluate."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One action on one resource; `context` maps condition keys to a value or a tuple of values."""

    action: str
    resource: str
    context: Mapping[str, ContextValue] = dataclasses.field(default_factory=dict)

    def value(self, key: str) -> ContextValue | None:
        wanted = key.lower()
        for name, value in self.context.items():
            if name.lower() == wanted:
                return value
        return None


@dataclasses.dataclass(frozen=True)
class Decision:
    outcome: str
    statements: tuple[str, ...] = ()  # the Sids that decided it

    @property
    def allowed(self) -> bool:
        return self.outcome == ALLOW


def _glob(pattern: str) -> re.Pattern[str]:
    if "${" in pattern:
        raise Unsupported(f"policy variables are not evaluated: {pattern!r}")
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)


def _listed(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _operator_holds(operator: str, key: str, wanted: list[str], request: Request) -> bool:
    if any("${" in w for w in wanted):
        raise Unsupported(f"policy variables are not evaluated: {key} {wanted!r}")
    have = request.value(key)
    if operator == "Null":
        if len(wanted) != 1 or wanted[0] not in ("true", "false"):
            raise Unsupported(f"Null takes \"true\" or \"false\", not {wanted!r}")
        return (have is None) == (wanted[0] == "true")
    qualifier, _, name = operator.rpartition(":")
    if_exists = name.endswith("IfExists")
    name = name.removesuffix("IfExists")
    if qualifier not in ("", "ForAllValues", "ForAnyValue") or name not in _STRING_OPERATORS:
        raise Unsupported(f"condition operator {operator!r} is not evaluated here")
    compare, negated = _STRING_OPERATORS[name]

    def one(value: str) -> bool:
        matched = any(compare(value, w) for w in wanted)
        return not matched if negated else matched

    if have is None:
        if if_exists:
            return True
        if qualifier == "ForAllValues":
            return True  # vacuously: no value that fails (IAM's own, often surprising, rule)
        if qualifier == "ForAnyValue":
            return False
        return negated  # a missing key matches no value: the negated operators hold
    values = [have] if isinstance(have, str) else list(have)
    if qualifier == "ForAllValues":
        return all(one(v) for v in values)
    if qualifier == "ForAnyValue":
        return any(one(v) for v in values)
    if len(values) != 1:
        raise Unsupported(f"{operator} on the multi-valued key {key}: use ForAllValues: or ForAnyValue:")
    return one(values[0])


def _conditions_hold(condition: Mapping[str, Mapping[str, str | list[str]]], request: Request) -> bool:
    return all(_operator_holds(operator, key, _listed(values), request)
               for operator, block in condition.items() for key, values in block.items())


def _applies(statement: Mapping, request: Request) -> bool:
    for element in ("NotAction", "NotResource", "NotPrincipal", "Principal"):
        if element in statement:
            raise Unsupported(f"{statement.get('Sid', '?')}: {element} is not evaluated here")
    if not any(_glob(a.lower()).fullmatch(request.action.lower()) for a in _listed(statement["Action"])):
        return False
    if not any(_glob(r).fullmatch(request.resource) for r in _listed(statement["Resource"])):
        return False
    return _conditions_hold(statement.get("Condition", {}), request)


def evaluate(document: Mapping, request: Request) -> Decision:
    """Allow, implicit deny or explicit deny, with the statements that decided it."""
    statements = document["Statement"]
    if isinstance(statements, Mapping):
        statements = [statements]
    allowing, denying = [], []
    for statement in statements:
        effect = statement["Effect"]
        if effect not in ("Allow", "Deny"):
            raise Unsupported(f"Effect {effect!r}")
        if _applies(statement, request):
            (allowing if effect == "Allow" else denying).append(statement.get("Sid", "?"))
    if denying:
        return Decision(EXPLICIT_DENY, tuple(denying))
    if allowing:
        return Decision(ALLOW, tuple(allowing))
    return Decision(IMPLICIT_DENY)


def tag_context(request_tags: Mapping[str, str] | None = None, resource_tags: Mapping[str, str] | None = None,
                create_action: str | None = None) -> dict[str, ContextValue]:
    """The condition keys EC2 sets from tags: aws:RequestTag/<k> and aws:TagKeys for the tags a
    request sets, aws:ResourceTag/<k> for those the resource carries, ec2:CreateAction when the
    tagging is part of the call that creates the resource."""
    context: dict[str, ContextValue] = {}
    if request_tags is not None:
        context.update({f"aws:RequestTag/{k}": v for k, v in request_tags.items()})
        context["aws:TagKeys"] = tuple(request_tags)
    context.update({f"aws:ResourceTag/{k}": v for k, v in (resource_tags or {}).items()})
    if create_action:
        context["ec2:CreateAction"] = create_action
    return context

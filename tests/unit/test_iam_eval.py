"""tests/iam_eval.py, the policy evaluator the IAM policy test relies on, on crafted policies:
each operator seen both allowing and denying, and what it cannot read refused loudly."""
from __future__ import annotations

import pytest

from tests.iam_eval import ALLOW, EXPLICIT_DENY, IMPLICIT_DENY, Request, Unsupported, evaluate, tag_context

IMAGE = "arn:aws:ec2:us-east-1::image/ami-0123"


def _policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _allow(condition: dict | None = None, action="ec2:CreateTags", resource="arn:aws:ec2:*::image/*", sid="A") -> dict:
    statement = {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource}
    if condition is not None:
        statement["Condition"] = condition
    return statement


def _outcome(statement: dict, context: dict, action="ec2:CreateTags", resource=IMAGE) -> str:
    return evaluate(_policy(statement), Request(action, resource, context)).outcome


def test_action_and_resource_matching():
    statement = _allow(action=["ec2:DeleteSnapshot", "ssm:Get*"], resource="arn:aws:ssm:*:*:parameter/golden-ami/*")
    param = "arn:aws:ssm:eu-west-1:123456789012:parameter/golden-ami/debian12/latest"
    assert _outcome(statement, {}, "ssm:GetParameter", param) == ALLOW
    assert _outcome(statement, {}, "SSM:getparameter", param) == ALLOW  # action names ignore case
    assert _outcome(statement, {}, "ssm:PutParameter", param) == IMPLICIT_DENY
    assert _outcome(statement, {}, "ssm:GetParameter", "arn:aws:ssm:eu-west-1:1:parameter/other/x") == IMPLICIT_DENY
    assert _outcome(statement, {}, "ssm:GetParameter", param.replace("ssm", "SSM", 1)) == IMPLICIT_DENY  # ARNs do not
    pair = _allow(action="ec2:CreateKeyPair", resource="arn:aws:ec2:*:*:key-pair/packer_????")
    assert _outcome(pair, {}, "ec2:CreateKeyPair", "arn:aws:ec2:us-east-1:1:key-pair/packer_ab12") == ALLOW
    assert _outcome(pair, {}, "ec2:CreateKeyPair", "arn:aws:ec2:us-east-1:1:key-pair/packer_ab123") == IMPLICIT_DENY
    assert _outcome(pair, {}, "ec2:CreateKeyPair", "arn:aws:ec2:us-east-1:1:key-pair/packer_ab/") == IMPLICIT_DENY
    dotted = _allow(action="sns:Publish", resource="arn:aws:sns:*:*:golden-ami.x")
    assert _outcome(dotted, {}, "sns:Publish", "arn:aws:sns:us-east-1:1:golden-amiXx") == IMPLICIT_DENY  # "." is literal


@pytest.mark.parametrize("operator, wanted, allowed_with, denied_with", [
    ("StringEquals", "golden-ami", "golden-ami", "Golden-AMI"),
    ("StringEqualsIgnoreCase", "golden-ami", "Golden-AMI", "golden-amis"),
    ("StringLike", "golden-*", "golden-ami", "other"),
    ("StringNotEquals", "approved", "candidate", "approved"),
    ("StringNotEqualsIgnoreCase", "approved", "candidate", "APPROVED"),
    ("StringNotLike", "appr*", "candidate", "approved"),
])
def test_string_operators(operator, wanted, allowed_with, denied_with):
    statement = _allow({operator: {"aws:RequestTag/Status": wanted}})
    assert _outcome(statement, {"aws:RequestTag/Status": allowed_with}) == ALLOW
    assert _outcome(statement, {"aws:RequestTag/Status": denied_with}) == IMPLICIT_DENY


def test_a_missing_key_fails_positive_operators_and_satisfies_negated_ones_and_ifexists():
    assert _outcome(_allow({"StringEquals": {"aws:RequestTag/Status": "candidate"}}), {}) == IMPLICIT_DENY
    assert _outcome(_allow({"StringNotEquals": {"aws:RequestTag/Status": "approved"}}), {}) == ALLOW
    if_exists = _allow({"StringEqualsIfExists": {"aws:RequestTag/Status": "candidate"}})
    assert _outcome(if_exists, {}) == ALLOW
    assert _outcome(if_exists, {"aws:RequestTag/Status": "candidate"}) == ALLOW
    assert _outcome(if_exists, {"aws:RequestTag/Status": "approved"}) == IMPLICIT_DENY


def test_null():
    untagged = _allow({"Null": {"aws:ResourceTag/ManagedBy": "true"}})
    assert _outcome(untagged, {}) == ALLOW
    assert _outcome(untagged, {"aws:ResourceTag/ManagedBy": "golden-ami"}) == IMPLICIT_DENY
    tagged = _allow({"Null": {"aws:ResourceTag/ManagedBy": "false"}})
    assert _outcome(tagged, {"aws:ResourceTag/ManagedBy": "x"}) == ALLOW
    assert _outcome(tagged, {}) == IMPLICIT_DENY


def test_set_operators():
    only_these = _allow({"ForAllValues:StringEquals": {"aws:TagKeys": ["ManagedBy", "Status"]}})
    assert _outcome(only_these, {"aws:TagKeys": ("ManagedBy",)}) == ALLOW
    assert _outcome(only_these, {"aws:TagKeys": ("ManagedBy", "ApprovalSignature")}) == IMPLICIT_DENY
    assert _outcome(only_these, {}) == ALLOW  # IAM's vacuous truth: no key, nothing outside the list
    any_of = _allow({"ForAnyValue:StringLike": {"aws:TagKeys": "Approval*"}})
    assert _outcome(any_of, {"aws:TagKeys": ("Status", "ApprovalSignature")}) == ALLOW
    assert _outcome(any_of, {"aws:TagKeys": ("Status",)}) == IMPLICIT_DENY
    assert _outcome(any_of, {}) == IMPLICIT_DENY
    none_of = _allow({"ForAllValues:StringNotLike": {"aws:TagKeys": "Approval*"}})
    assert _outcome(none_of, {"aws:TagKeys": ("Status",)}) == ALLOW
    assert _outcome(none_of, {"aws:TagKeys": ("Status", "ApprovalStatement")}) == IMPLICIT_DENY


def test_keys_are_anded_values_ored_and_key_names_ignore_case():
    statement = _allow({"StringEquals": {"aws:RequestTag/ManagedBy": "golden-ami",
                                         "ec2:CreateAction": ["RunInstances", "CreateSecurityGroup"]}})
    both = {"aws:RequestTag/ManagedBy": "golden-ami", "EC2:createaction": "CreateSecurityGroup"}
    assert _outcome(statement, both) == ALLOW
    assert _outcome(statement, {**both, "EC2:createaction": "CreateVolume"}) == IMPLICIT_DENY
    assert _outcome(statement, {"ec2:CreateAction": "RunInstances"}) == IMPLICIT_DENY
    two_operators = _allow({"StringEquals": {"aws:RequestTag/ManagedBy": "golden-ami"},
                            "Null": {"aws:ResourceTag/ManagedBy": "true"}})
    assert _outcome(two_operators, {"aws:RequestTag/ManagedBy": "golden-ami"}) == ALLOW
    assert _outcome(two_operators, {"aws:RequestTag/ManagedBy": "golden-ami",
                                    "aws:ResourceTag/ManagedBy": "golden-ami"}) == IMPLICIT_DENY


def test_an_explicit_deny_wins_and_the_deciding_statements_are_named():
    allow = _allow(sid="Tag")
    deny = {**_allow({"StringEquals": {"aws:RequestTag/Status": "approved"}}, sid="NoApproval"), "Effect": "Deny"}
    request = Request("ec2:CreateTags", IMAGE, {"aws:RequestTag/Status": "approved"})
    decision = evaluate(_policy(allow, deny), request)
    assert decision.outcome == EXPLICIT_DENY and decision.statements == ("NoApproval",) and not decision.allowed
    decision = evaluate(_policy(allow, deny), Request("ec2:CreateTags", IMAGE, {}))
    assert decision.allowed and decision.statements == ("Tag",)


@pytest.mark.parametrize("statement, context", [
    (_allow({"NumericLessThan": {"ec2:VolumeSize": "100"}}), {"ec2:VolumeSize": "8"}),
    (_allow({"Bool": {"aws:SecureTransport": "true"}}), {"aws:SecureTransport": "true"}),
    (_allow({"ForAllValues:Null": {"aws:TagKeys": "true"}}), {}),
    (_allow({"StringEquals": {"aws:TagKeys": "ManagedBy"}}), {"aws:TagKeys": ("ManagedBy", "Status")}),
    (_allow({"StringEquals": {"aws:RequestTag/Owner": "${aws:username}"}}), {"aws:RequestTag/Owner": "x"}),
    (_allow({"Null": {"aws:ResourceTag/ManagedBy": "yes"}}), {}),
    ({"Sid": "N", "Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}, {}),
])
def test_what_it_cannot_evaluate_raises_instead_of_allowing(statement, context):
    with pytest.raises(Unsupported):
        _outcome(statement, context)


def test_tag_context():
    assert tag_context({"ManagedBy": "golden-ami"}, {"Status": "candidate"}, "RunInstances") == {
        "aws:RequestTag/ManagedBy": "golden-ami", "aws:TagKeys": ("ManagedBy",),
        "aws:ResourceTag/Status": "candidate", "ec2:CreateAction": "RunInstances"}
    assert tag_context() == {}

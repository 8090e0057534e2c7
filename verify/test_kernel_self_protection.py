"""Kernel self-protection beyond the benchmarks (GA-KERNEL-*): the running kernel's parameters
on this fresh boot - what every sysctl.d file together left in force, not what one file says -
and the FireWire modules refused like the benchmarks' unused modules."""
from __future__ import annotations

import pytest

from ga_system import module_problems


def _assert_kernel_values(facts, params):
    """Every key of the control holds exactly its value (a key the kernel lacks fails)."""
    expected = str(params["value"])
    wrong = []
    for key in params["sysctl_keys"]:
        value = facts.sysctl(key)
        wrong += [f"{key} is absent from this kernel"] if value is None else \
            [f"{key} is {value}"] if value != expected else []
    assert not wrong, f"{'; '.join(wrong)}, expected {expected}"


@pytest.mark.control("GA-KERNEL-KPTR")
def test_kernel_addresses_hidden(facts, params):
    _assert_kernel_values(facts, params)


@pytest.mark.control("GA-KERNEL-SYSRQ")
def test_sysrq_disabled(facts, params):
    _assert_kernel_values(facts, params)


@pytest.mark.control("GA-KERNEL-LDISC")
def test_line_disciplines_not_autoloaded(facts, params):
    _assert_kernel_values(facts, params)


@pytest.mark.control("GA-KERNEL-PROTECTED-FILES")
def test_fifos_and_regular_files_protected(facts, params):
    _assert_kernel_values(facts, params)


@pytest.mark.control("GA-KERNEL-BPF-JIT-HARDEN")
def test_bpf_jit_hardened(facts, params):
    _assert_kernel_values(facts, params)


@pytest.mark.control("GA-KERNEL-FIREWIRE")
def test_firewire_not_loadable(facts, params):
    problems = [problem for module in params["modules"] for problem in module_problems(facts, module)]
    assert not problems, "; ".join(problems)

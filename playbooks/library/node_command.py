#!/usr/bin/python3
"""Ansible module: run a command that changes the node; in check mode, report that change without running it.

ansible.builtin.command skips itself in check mode and reports nothing changed, so a check-mode run
(`provisioner plan`) could not say that the real run would run it: swap turned off, kernel settings applied,
images imported, etcd members added, manifests applied. The roles run every such command through this module,
with a `when` that says when the change is needed; read-only probes stay ansible.builtin.command with
`check_mode: false` and `changed_when: false`, so that check mode sees what the real run would see.
"""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: node_command
short_description: a command that changes the node; in check mode, the change it would make without running it
options:
  argv:
    description: The command and its arguments, run without a shell.
    type: list
    elements: str
  cmd:
    description: A shell command line, run by /bin/sh (for `&&` and redirections).
    type: str
notes:
  - Exactly one of argv and cmd. A non-zero exit fails the task, with its stderr.
  - Run, it always reports changed (the task's `when` decides whether it runs); a task whose output tells
    whether something changed sets changed_when, and `ansible_check_mode or ...` keeps check mode's answer.
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "argv": {"type": "list", "elements": "str"},
            "cmd": {"type": "str"},
        },
        required_one_of=[("argv", "cmd")],
        mutually_exclusive=[("argv", "cmd")],
        supports_check_mode=True,
    )
    argv, cmd = module.params["argv"], module.params["cmd"]
    shown = cmd if cmd is not None else " ".join(argv)
    if module.check_mode:
        module.exit_json(changed=True, rc=0, stdout="", stderr="", stdout_lines=[], msg=f"would run: {shown}")
    rc, stdout, stderr = module.run_command(cmd if cmd is not None else argv, use_unsafe_shell=cmd is not None)
    result = {"rc": rc, "stdout": stdout, "stderr": stderr, "stdout_lines": stdout.splitlines(), "cmd": shown}
    if rc != 0:
        module.fail_json(msg=f"{shown}: exit code {rc}", **result)
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()

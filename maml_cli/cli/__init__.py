"""Thin Hydra entry points: ``maml-train`` and ``maml-eval``.

Importing this package (which every entry point does before torch is loaded) sets the OpenMP wait
policy for the process, because OpenMP reads it once, when torch's runtime library is loaded.
"""

from maml_cli.threads import set_wait_policy

set_wait_policy()

from maml_cli.cli.help import register_help_resolver  # noqa: E402  (after the wait policy, before torch)

register_help_resolver()

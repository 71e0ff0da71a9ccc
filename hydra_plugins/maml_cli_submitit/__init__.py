"""maml-cli's submitit launchers, named by ``configs/hydra/launcher/submitit_{local,slurm}.yaml``.

Hydra instantiates launchers only from the ``hydra_plugins`` namespace package, which it scans at
start, so the classes live here; what they do is in :mod:`maml_cli.cli.launchers`. Without
hydra-submitit-launcher (the ``[sweep]`` extra) nothing is defined, and Hydra's scan imports this
module without a warning; ``SweepReport`` then says which extra to install.
"""

from __future__ import annotations

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _plugin
except ImportError:
    _plugin = None

if _plugin is not None:
    from maml_cli.cli.launchers import RequeueingLauncher

    class LocalLauncher(RequeueingLauncher, _plugin.LocalLauncher):
        """Jobs as local processes (``hydra/launcher=submitit_local``)."""

    class SlurmLauncher(RequeueingLauncher, _plugin.SlurmLauncher):
        """Jobs as SLURM jobs (``hydra/launcher=submitit_slurm``)."""

    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.core.config_store import ConfigStore
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    class MamlLauncherConfigs(SearchPathPlugin):
        """Lets ``configs/hydra/launcher/submitit_{local,slurm}.yaml`` stand in for the plugin's own.

        The plugin registers its two configs as structured configs of the same names, and Hydra
        validates a YAML config against a structured config of its name ("automatic schema
        matching"): a deprecation warning on every run, and an error for the keys the local one
        adds (``signal_delay_s``, ``max_num_timeout``). So, for maml-cli's commands only (their
        config dir is on the search path), the plugin's two entries are taken out of the
        ConfigStore; Hydra calls this after importing every plugin and before composing.
        """

        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            from maml_cli.config import config_dir

            ours = str(config_dir())
            if not any(ours in str(element.path) for element in search_path.get_path()):
                return  # another Hydra app in this environment: the plugin's configs stay
            launchers = ConfigStore.instance().repo.get("hydra", {}).get("launcher", {})
            for name in ("submitit_local.yaml", "submitit_slurm.yaml"):
                launchers.pop(name, None)

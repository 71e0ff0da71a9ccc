"""The config groups ``--help`` lists: the options a user can pick, without the schema nodes.

Hydra's own ``$APP_CONFIG_GROUPS`` lists every config of a group, including the structured-config
schemas that the YAML files build on (``sinusoid_schema``, ``maml_schema`` ...), which are no
options at all. ``train.yaml``'s help template calls the resolver registered here instead; it asks
Hydra's config loader the same question (so groups from a user's ``--config-dir`` appear too) and
leaves out the ``*_schema`` entries.
"""

from __future__ import annotations

from omegaconf import OmegaConf

RESOLVER = "maml_cli.config_groups"


def _groups(loader, parent: str = "") -> list[str]:
    from hydra.core.object_type import ObjectType

    found = []
    for group in loader.list_groups(parent):
        name = f"{parent}/{group}" if parent else group
        if name == "hydra" or name.startswith("hydra/"):
            continue  # Hydra's own groups have --hydra-help
        if loader.get_group_options(name, ObjectType.CONFIG):
            found.append(name)
        found.extend(_groups(loader, name))
    return found


def config_groups() -> str:
    """One line per group: ``group: option, option, ...``, schemas left out."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    lines = []
    for group in sorted(_groups(loader)):
        options = sorted(o for o in loader.get_group_options(group) if not o.endswith("_schema"))
        if options:
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def register_help_resolver() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, config_groups)

"""One-line error messages for the command line (the traceback stays behind --traceback)."""
import difflib
import errno
import importlib.util
import os


def _chain(error: BaseException):
    """error, then its causes and contexts, each once."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


_ENVIRONMENT = {errno.ENOSPC: "the disk is full", errno.EROFS: "the filesystem is read-only",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.ENOTDIR: "a part of the path is a file, not a folder",
                errno.EEXIST: "a file is in the way", errno.EDQUOT: "the disk quota is exceeded",
                errno.ENOENT: "no such file or folder"}


def one_line(error: BaseException) -> str:
    """The message of an error in one line; for a failure of the environment anywhere in the
    chain (disk full, read-only, permission denied, a file where a folder should be), that
    cause and the path it concerns."""
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno in _ENVIRONMENT:
            path = link.filename or ""
            return (f"cannot write {path}: {_ENVIRONMENT[link.errno]} ({link.strerror})" if path
                    else f"{_ENVIRONMENT[link.errno]} ({link.strerror})")
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _config_file(argv):
    for arg in argv:
        if arg.startswith("--config="):
            return arg[len("--config="):]
    return None


def _load_config(spec: str):
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("udm_cli_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


# Names users reach for that udm spells otherwise: (section, name) -> the field meant.
_MEANT = {("sampler", "schedule"): "config.sampler.spacing (the time grid: uniform, karras, "
                                   "logsnr, ...; config.process.schedule is the noise schedule)",
          ("sampler", "steps"): "config.sampler.num_steps",
          ("train", "steps"): "config.train.num_steps"}


def command_line_error(argv, error: BaseException) -> str:
    """What is wrong with a command line whose flags did not parse, in one line: an unknown
    config field with the nearest valid names, or the parser's own message."""
    spec = _config_file(argv)
    if spec is not None and os.path.exists(spec.partition(":")[0]):
        try:
            config = _load_config(spec)
        except Exception as load_error:  # noqa: BLE001
            return f"--config={spec}: {one_line(load_error)}"
        for arg in argv:
            if not arg.startswith("--config."):
                continue
            dotted = arg[len("--config."):].partition("=")[0]
            node, walked = config, "config"
            for name in dotted.split("."):
                keys = list(node.keys()) if hasattr(node, "keys") else []
                if name not in keys:
                    meant = _MEANT.get((walked.rpartition(".")[2], name))
                    if meant is not None:
                        return f"unknown config field {walked}.{name}; did you mean {meant}?"
                    near = difflib.get_close_matches(name, keys, n=3, cutoff=0.5)
                    hint = (f"; did you mean {', '.join(f'{walked}.{k}' for k in near)}?" if near
                            else f"; valid: {', '.join(sorted(keys))}" if keys else "")
                    return f"unknown config field {walked}.{name}{hint}"
                node, walked = node[name], f"{walked}.{name}"
    elif spec is not None:
        return f"--config={spec}: no such file"
    messages = [str(link).strip().splitlines()[-1] for link in _chain(error) if str(link).strip()]
    return messages[0] if messages else type(error).__name__

"""What every absl binary of `experiments/` shares: one entry point, `cli.run(main)`.

It parses the flags (a misspelt `--config.key`, a bad value or a stray positional argument is
one line on stderr and exit status 1), answers `--help` with the binary's doc, its flags and
the config variants and keys (exit 0), quiets the libraries (`console.setup(--verbosity)`),
starts `jax.distributed` for multi-process jobs, and reports the library's clear errors in one
line (`console.run_app`; `--verbosity=1` shows the traceback).
"""

import os
import sys
from typing import Callable

from absl import flags

from experiments import configs
from experiments.configs import base
from jepa_jax import config_diff, console, distributed, layout


def _fail(message: str) -> None:
  sys.exit(f'error: {message}')


def _help_text() -> str:
  main_module = sys.modules['__main__']
  lines = [(main_module.__doc__ or '').strip(), '', flags.FLAGS.main_module_help()]
  if 'config' in flags.FLAGS:
    files = sorted(f for f in os.listdir(configs.CONFIG_DIR)
                   if f.endswith('.py') and f not in ('__init__.py', 'base.py'))
    lines += ['', 'Config files (--config=experiments/configs/<file>:<variant>): ' +
              ', '.join(files), f'Variants: {", ".join(base.VARIANTS)}',
              'Config keys of this --config (override any with --config.<key>=<value>):']
    lines += [f'  {key} = {value!r}'
              for key, value in config_diff.flatten(flags.FLAGS['config'].value).items()]
  return '\n'.join(lines)


def parse_flags(argv: list) -> list:
  """absl's flag parsing with one-line errors, `--help` (exit 0) and no positional args."""
  if any(arg in ('--help', '-h', '--helpshort', '--helpfull', '-?') for arg in argv[1:]):
    rest = [a for a in argv if a not in ('--help', '-h', '--helpshort', '--helpfull', '-?')]
    try:
      flags.FLAGS(rest, known_only=True)
    except Exception:  # pylint: disable=broad-except  # help still shows the defaults
      flags.FLAGS.mark_as_parsed()
    print(_help_text())
    sys.exit(0)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{e} (see --help)')
  except KeyError as e:  # config_flags: a key the config does not have
    _fail(f'unknown config key {e.args[0]} in a --config.<key>=<value> override; see --help')
  except Exception as e:  # pylint: disable=broad-except  # config_flags raises plain errors
    _fail(f'bad --config override ({type(e).__name__}: {e}); see --help for the keys')
  if len(rest) > 1:
    _fail(f'unexpected arguments {rest[1:]}: every option is a --flag=value (see --help)')
  return rest


def require_method(config, method: str, binary: str) -> None:
  """Stops in one line when `config.method` has no stage for this binary, naming the one that
  trains that method."""
  if layout.check_method(config.method) != method:
    other = 'experiments.train_lewm' if config.method == 'lewm' else (
        'experiments.pretrain and experiments.train_wm')
    raise ValueError(
        f'{binary} trains the {method!r} method but this config has method='
        f'{config.method!r}: run python -m {other}, or pass --config.method={method}')


def run(main: Callable[[list], None]) -> None:
  """Runs `main(argv)` as an absl app with the behaviour of the module docstring."""

  def wrapped(argv):
    console.setup(flags.FLAGS.verbosity)
    distributed.maybe_initialize()
    main(argv)

  console.run_app(wrapped, flags_parser=parse_flags)

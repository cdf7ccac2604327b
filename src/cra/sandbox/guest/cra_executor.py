"""The guest side of CRA's sandbox: runs one script inside CPython compiled to WebAssembly.

componentize-py imports this module once, at build time, and snapshots the
interpreter. Every run then starts from that snapshot in a fresh instance, so
nothing one run does is seen by the next. The host (``cra.sandbox.wasm``)
supplies the virtual clock, the seeded randomness and the scratch directory;
this side makes the standard library use them:

* ``time.sleep``, ``select.select`` with no descriptors, and asyncio's event
  loop advance the virtual clock through the host's ``sleep`` and return at once,
  so sleeping cannot outlast the deadline;
* ``os.listdir`` and ``os.scandir`` list names in sorted order, whatever order
  the host's filesystem keeps them in;
* ``os.stat``, ``os.lstat``, ``os.fstat`` and ``os.scandir``'s entries report every
  file's times as the virtual wall clock's start, not the host's clock;
* stdout and stderr are written through at every write, in pieces of at most
  8 KiB (what a single WASI write carries), so that what the code printed
  before a trap or a deadline is kept.

The standard library available at run time is what is imported below, at build
time; any other module fails to import.
"""

# The modules a script may import: everything here is in the snapshot.
import abc
import argparse
import array
import ast
import asyncio
import asyncio.base_events
import base64
import binascii
import bisect
import builtins
import calendar
import cmath
import codecs
import collections
import collections.abc
import colorsys
import contextlib
import copy
import csv
import dataclasses
import datetime
import decimal
import difflib
import encodings.idna
import enum
import errno
import fnmatch
import fractions
import functools
import gc
import glob
import graphlib
import gzip
import hashlib
import heapq
import hmac
import html
import html.parser
import inspect
import io
import ipaddress
import itertools
import json
import keyword
import linecache
import locale
import logging
import math
import numbers
import operator
import os
import pathlib
import posix
import pprint
import queue
import random
import re
import reprlib
import secrets
import select
import selectors
import shlex
import shutil
import socket
import sqlite3
import statistics
import string
import struct
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
import tokenize
import traceback
import types
import typing
import unicodedata
import unittest
import urllib.parse
import uuid
import warnings
import weakref
import xml.dom.minidom
import xml.etree.ElementTree
import zipfile
import zlib

import wit_world
from wit_world.imports import host

_PRELOADED = (
    abc,
    argparse,
    array,
    ast,
    asyncio,
    base64,
    binascii,
    bisect,
    calendar,
    cmath,
    codecs,
    collections,
    colorsys,
    contextlib,
    copy,
    csv,
    encodings.idna,
    dataclasses,
    datetime,
    decimal,
    difflib,
    enum,
    errno,
    fnmatch,
    fractions,
    functools,
    gc,
    glob,
    graphlib,
    gzip,
    hashlib,
    heapq,
    hmac,
    html,
    inspect,
    ipaddress,
    itertools,
    json,
    keyword,
    linecache,
    locale,
    logging,
    math,
    numbers,
    operator,
    pathlib,
    pprint,
    queue,
    re,
    reprlib,
    secrets,
    selectors,
    shlex,
    shutil,
    socket,
    sqlite3,
    statistics,
    string,
    struct,
    subprocess,
    tarfile,
    tempfile,
    textwrap,
    threading,
    tokenize,
    types,
    typing,
    unicodedata,
    unittest,
    urllib,
    uuid,
    warnings,
    weakref,
    xml,
    zipfile,
    zlib,
)

_WORKDIR = "/work"
_STREAM_PIECE = 8192  # one WASI write at most


def _virtual_sleep(seconds: float) -> None:
    """``time.sleep``: advance the virtual clock, with CPython's own argument checks."""
    if not isinstance(seconds, (int, float)):
        raise TypeError(f"'{type(seconds).__name__}' object cannot be interpreted as an integer or float")
    if seconds != seconds:
        raise ValueError("Invalid value NaN (not a number)")
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    host.sleep(min(int(seconds * 1_000_000_000), 2**64 - 1))


_real_select = select.select


def _select(rlist, wlist, xlist, timeout=None):
    """``select.select`` with no descriptors is a sleep; with descriptors it is the real one."""
    if not rlist and not wlist and not xlist:
        if timeout is None:
            raise OSError(errno.EINVAL, "select() with nothing to wait for and no timeout would block forever")
        _virtual_sleep(timeout)
        return [], [], []
    return _real_select(rlist, wlist, xlist, timeout)


class _VirtualSelector:
    """The selector of :class:`_VirtualLoop`: it has no descriptors, so waiting is sleeping."""

    def select(self, timeout=None):
        if timeout is None:
            raise RuntimeError("the event loop would wait forever: nothing is scheduled")
        if timeout > 0:
            _virtual_sleep(timeout)
        return []

    def close(self) -> None:
        return None


class _VirtualLoop(asyncio.base_events.BaseEventLoop):
    """An asyncio loop on the virtual clock, without the self-pipe WASI cannot make."""

    def __init__(self) -> None:
        super().__init__()
        self._selector = _VirtualSelector()

    def _process_events(self, event_list):
        return None

    def _write_to_self(self) -> None:
        return None

    def close(self) -> None:
        super().close()
        self._selector.close()


#: Every file's times, as the host's virtual wall clock starts: 2024-01-01T00:00:00Z.
_FILE_TIME_S = 1_704_067_200
_TIME_FIELDS = ("st_atime", "st_mtime", "st_ctime", "st_birthtime")
_EXTRA_FIELDS = ("st_blksize", "st_blocks", "st_rdev", "st_flags", "st_gen")

_real_listdir = os.listdir
_real_scandir = os.scandir
_real_stat = os.stat
_real_lstat = os.lstat
_real_fstat = os.fstat


def _virtual_times(info: os.stat_result) -> os.stat_result:
    """``info`` with every timestamp replaced by the virtual one."""
    extra = {name: getattr(info, name) for name in _EXTRA_FIELDS if hasattr(info, name)}
    for name in _TIME_FIELDS:
        if hasattr(info, name):
            extra[name] = float(_FILE_TIME_S)
            extra[f"{name}_ns"] = _FILE_TIME_S * 1_000_000_000
    visible = list(info[:10])
    visible[7:10] = [_FILE_TIME_S] * 3
    return os.stat_result(visible, extra)


def _stat(path, *, dir_fd=None, follow_symlinks=True):
    return _virtual_times(_real_stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks))


def _lstat(path, *, dir_fd=None):
    return _virtual_times(_real_lstat(path, dir_fd=dir_fd))


def _fstat(fd):
    return _virtual_times(_real_fstat(fd))


def _listdir(path="."):
    return sorted(_real_listdir(path))


class _Entry:
    """An ``os.DirEntry`` whose ``stat()`` reports virtual times."""

    __slots__ = ("_entry", "name", "path")

    def __init__(self, entry) -> None:
        self._entry = entry
        self.name = entry.name
        self.path = entry.path

    def is_dir(self, *, follow_symlinks=True):
        return self._entry.is_dir(follow_symlinks=follow_symlinks)

    def is_file(self, *, follow_symlinks=True):
        return self._entry.is_file(follow_symlinks=follow_symlinks)

    def is_symlink(self):
        return self._entry.is_symlink()

    def is_junction(self):
        return False

    def inode(self):
        return self._entry.inode()

    def stat(self, *, follow_symlinks=True):
        return _virtual_times(self._entry.stat(follow_symlinks=follow_symlinks))

    def __fspath__(self):
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class _SortedScandir:
    """``os.scandir``'s iterator and context manager, in name order."""

    def __init__(self, entries: list) -> None:
        self._entries = iter(entries)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._entries = iter(())


def _scandir(path="."):
    with _real_scandir(path) as entries:
        return _SortedScandir(sorted((_Entry(entry) for entry in entries), key=lambda entry: entry.name))


time.sleep = _virtual_sleep
select.select = _select
asyncio.events.new_event_loop = _VirtualLoop
asyncio.new_event_loop = _VirtualLoop
for _module in (os, posix):
    _module.listdir = _listdir
    _module.scandir = _scandir
    _module.stat = _stat
    _module.lstat = _lstat
    _module.fstat = _fstat


class _WriteThrough(io.RawIOBase):
    """A descriptor's raw stream that writes every byte at once, in pieces one WASI write can carry."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done : done + _STREAM_PIECE])
        return len(view)


def _stream(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(_WriteThrough(fd), encoding="utf-8", errors="backslashreplace", write_through=True)


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return max(-(2**31), min(code, 2**31 - 1))
    print(code, file=sys.stderr)
    return 1


class WitWorld(wit_world.WitWorld):
    def run(self, code: str, filename: str) -> wit_world.Outcome:
        streams = (_stream(1), _stream(2))
        sys.stdout = sys.__stdout__ = streams[0]
        sys.stderr = sys.__stderr__ = streams[1]
        sys.argv = [filename]
        random.seed(os.urandom(32))
        exit_code, exception = 0, None
        try:
            os.chdir(_WORKDIR)
            namespace = {"__name__": "__main__", "__file__": filename, "__builtins__": builtins}
            exec(compile(code, filename, "exec"), namespace)  # noqa: S102 - running the script is the point
        except SystemExit as exc:
            exit_code = _exit_code(exc)
        except BaseException as exc:  # noqa: BLE001 - the script's every failure is reported, never raised
            exit_code, exception = 1, type(exc).__name__
            # The first frame is this function's; the script's own frames follow it.
            # A traceback that cannot be printed must not abort the runtime.
            with contextlib.suppress(BaseException):
                traceback.print_exception(exc.with_traceback(exc.__traceback__.tb_next if exc.__traceback__ else None))
        finally:
            for stream in streams:
                with contextlib.suppress(BaseException):  # output that cannot be flushed is lost, not fatal
                    stream.flush()
        return wit_world.Outcome(exit_code=exit_code, exception=exception)

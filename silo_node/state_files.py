"""The files and folders in a silo's state_dir that mean the node has a history (imported without torch).

`compliance.node_log.open_node_log` refuses to start a fresh audit log when any of these exist
without one; the node (`silo_node.node`) and its stream receivers (`silo_node.streams`) open the
same log with the same list.
"""

from __future__ import annotations

LEDGER_FILE = "privacy-ledger.sqlite"  # the node's privacy ledger in its state dir
WRAP_KEY_FILE = "wrap-key.bin"  # the node's X25519 key pair that study secrets are wrapped for
STUDIES_DIR = "studies"  # the node's approval book
STREAMS_DIR = "streams"  # the node's stream store (silo_node.streams)
STATE_FILES = (LEDGER_FILE, STUDIES_DIR, WRAP_KEY_FILE, STREAMS_DIR)  # written once the node has done something

"""Where the consoles listen by default (loopback: a console is opened on the machine it runs on)."""

SITE_DEFAULT_LISTEN = "127.0.0.1:8470"
RESEARCHER_DEFAULT_LISTEN = "127.0.0.1:8471"

"""``packdist fetch``: a client installs a package into a directory of its own, from the
nearest distribution servers that hold it, falling back to the next source at once.

Its stages, each testable alone (pulpcore's declarative stages, ``STYLE.md`` 13):

* :mod:`~packdist.client.link` — the site: its authority discovered and checked against
  the token's fingerprint, the sources asked for, the fetch reported;
* :mod:`~packdist.client.staging` — the staging tree beside DIR (laid out, or resumed),
  filled with every chunk found here (a resumed staging tree, the older version in DIR);
* :mod:`~packdist.client.transfer` — the chunks still missing, from each source in
  turn, every chunk verified before it is written;
* :mod:`~packdist.client.commit` — DIR replaced atomically;
* :mod:`~packdist.client.fetch` — the stages in order.

A client imports neither the site nor the agent: what they say to it is typed in
:mod:`packdist.protocol.client_api`, and chunk streams are framed as in :mod:`packdist.http`.
"""

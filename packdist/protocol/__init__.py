"""What a site and its agents say to each other, in one place both import.

``messages`` types every message (install, its status, heartbeat, removal; chunk streams are
framed in :mod:`packdist.http`); ``agent_api`` is the site's client of an agent and
``site_api`` the agent's client of the site. The agent never imports the site and the site
never imports the agent: both stand on this package (``make lint`` checks it).
"""

//! The Shaddock application model: servers.json, master, routers, channels (work in progress).

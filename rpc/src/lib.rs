//! Framed, multiplexed TCP RPC between Shaddock servers (work in progress).

//! The server side of one client connection as a sans-IO state machine (work in progress).

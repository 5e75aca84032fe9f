//! The Shaddock frontend: one port for raw TCP and WebSocket pomelo clients (work in progress).

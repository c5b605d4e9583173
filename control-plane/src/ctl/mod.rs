//! `weirctl`: written next.

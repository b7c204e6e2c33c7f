//! Integration tests: the real store on a fresh database per test, the real binary where the
//! behaviour is the command line's.

mod bad_input;
mod campaigns;
mod crash;
mod helpers;
mod import;
mod procs;
mod props;
mod sending;
mod sim_api;
mod webhook_corpus;

//! Integration tests: the real store on a fresh database per test, the real binary where the
//! behaviour is the command line's.

mod api;
mod bad_input;
mod brakes;
mod campaigns;
mod config_keys;
mod contract;
mod crash;
mod dbfaults;
mod dbfile;
mod faults;
mod freeze;
mod gupshup;
mod helpers;
mod import;
mod inbox;
mod metrics;
mod multi;
mod obs;
mod pacing;
mod packaging;
mod procs;
mod props;
mod sending;
mod sim_api;
mod tiers;
mod webhook_corpus;
mod webhook_fixtures;

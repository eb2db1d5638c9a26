//! The store layer: where finished backups are written to, listed from and pruned in.
//!
//! Backends (S3 and a plain directory) will sit behind one object-store interface with a single key
//! layout so export, list, restore and prune can never disagree; for now only the S3 client
//! construction lives here.

pub mod s3;

//! switchyard-sdk (work in progress).

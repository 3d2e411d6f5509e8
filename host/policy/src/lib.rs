//! switchyard-policy (work in progress).

//! switchyard-redis (work in progress).

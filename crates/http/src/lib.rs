//! HTTP proxying (in progress).

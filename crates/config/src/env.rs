//! Where settings are read from: the process environment, or a map in tests.
//!
//! Reading through the [`Env`] trait keeps `std::env::set_var` out of tests
//! (it is process-global and racy across test threads).

use std::collections::{BTreeMap, HashMap};

/// A source of `NAME=value` settings.
pub trait Env {
    /// The value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;

    /// Every name that is set, so that misspelt settings can be reported.
    fn names(&self) -> Vec<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        // A value that is not UTF-8 is passed on lossily: it then fails to
        // parse and is reported like any other bad value.
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }

    fn names(&self) -> Vec<String> {
        std::env::vars_os()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }

    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }

    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

impl Env for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_string())
    }

    fn names(&self) -> Vec<String> {
        self.iter().map(|(k, _)| (*k).to_string()).collect()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        Env::get(self.as_slice(), name)
    }

    fn names(&self) -> Vec<String> {
        Env::names(self.as_slice())
    }
}

//! Entry points for the fuzz targets (feature `fuzzing`, never built
//! into the proxy): the control plane's answers applied by the same code
//! the watches run, with no control plane, channel or task around it.
//!
//! Each function takes the steps of a watch (messages, each saying
//! whether it opens a stream, and stream failures) and returns what the
//! watch's readers would see after the last one.

use crate::{
    Metrics, PolicyAnswer, PortPolicies, Profile, Resolution, ServerPolicy, destination, policy,
    watch::Apply,
};
use linkerd2_proxy_api::{destination as dst, inbound, outbound};
use tokio::sync::watch;

/// One thing that happens to a watch.
#[derive(Clone, Debug)]
pub enum Step<M> {
    /// A message; `first` when it opens a (re)connected stream.
    Message {
        /// The message.
        msg: M,
        /// Whether it is the first of its stream.
        first: bool,
    },
    /// The stream failed with this gRPC status code.
    Error(i32),
}

/// Applies `steps` to a fresh watch of `V` with `apply`.
fn run<M, V: Clone + Default>(
    mut apply: impl Apply<M, V>,
    steps: impl IntoIterator<Item = Step<M>>,
) -> V {
    let (tx, _rx) = watch::channel(V::default());
    for step in steps {
        match step {
            Step::Message { msg, first } => apply.message(&tx, msg, first),
            Step::Error(code) => apply.error(
                &tx,
                &tonic::Status::new(tonic::Code::from_i32(code), "fuzz"),
            ),
        }
    }
    tx.borrow().clone()
}

/// `Destination.Get` updates applied to an endpoint set.
pub fn endpoints(
    metrics: &Metrics,
    steps: impl IntoIterator<Item = Step<dst::Update>>,
) -> Resolution {
    let metrics = metrics.clone();
    run(destination::Endpoints { metrics }, steps)
}

/// `Destination.GetProfile` answers read into a profile.
pub fn profile(
    metrics: &Metrics,
    steps: impl IntoIterator<Item = Step<dst::DestinationProfile>>,
) -> Option<Profile> {
    let metrics = metrics.clone();
    run(destination::Profiles { metrics }, steps)
}

/// `OutboundPolicies.Watch` answers read into an outbound policy.
pub fn outbound_policy(
    metrics: &Metrics,
    steps: impl IntoIterator<Item = Step<outbound::OutboundPolicy>>,
) -> PolicyAnswer {
    let metrics = metrics.clone();
    run(policy::Policies { metrics }, steps)
}

/// `InboundServerPolicies.WatchPort` answers read into a port's server
/// policy.
pub fn inbound_server(
    metrics: &Metrics,
    steps: impl IntoIterator<Item = Step<inbound::Server>>,
) -> Option<ServerPolicy> {
    let metrics = metrics.clone();
    run(PortPolicies { metrics }, steps)
}

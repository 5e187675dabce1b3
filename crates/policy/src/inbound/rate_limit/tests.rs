use super::*;
use tokio::time::advance;

fn rps(n: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(n)
}

fn meta() -> Meta {
    Meta::Default { name: "rl".into() }
}

/// How many of `n` requests from `id`, all at once, are admitted.
fn burst(l: &LocalRateLimit, id: Option<&str>, n: usize) -> usize {
    (0..n).filter(|_| l.check(id).is_ok()).count()
}

const A: &str = "a.ns.serviceaccount.identity.linkerd.cluster.local";
const B: &str = "b.ns.serviceaccount.identity.linkerd.cluster.local";

#[tokio::test(start_paused = true)]
async fn total_admits_about_its_rate() {
    let l = LocalRateLimit::new(meta(), rps(100), None, vec![]);
    assert_eq!(burst(&l, None, 1000), 100);
    let err = l.check(Some(A)).unwrap_err();
    assert_eq!(err.kind, LimitKind::Total);
    assert!(err.retry_after > Duration::ZERO && err.retry_after <= Duration::from_millis(10));
    assert_eq!(err.retry_after_secs(), 1);
    assert_eq!(
        err.to_string(),
        "rate limited: the total limit of 100 requests per second is used up"
    );

    // A tenth of a second refills a tenth of the burst.
    advance(Duration::from_millis(100)).await;
    assert_eq!(burst(&l, None, 1000), 10);
    advance(Duration::from_secs(1)).await;
    assert_eq!(burst(&l, Some(A), 1000), 100);
}

#[tokio::test(start_paused = true)]
async fn identities_are_isolated() {
    let l = LocalRateLimit::new(meta(), None, rps(10), vec![]);
    assert_eq!(burst(&l, Some(A), 100), 10);
    let err = l.check(Some(A)).unwrap_err();
    assert_eq!(err.kind, LimitKind::Identity);
    assert_eq!(burst(&l, Some(B), 100), 10, "b has its own bucket");
    // Every unmeshed client shares one bucket.
    assert_eq!(burst(&l, None, 100), 10);
    assert!(l.check(None).is_err());
}

#[tokio::test(start_paused = true)]
async fn refused_by_its_own_bucket_spends_no_total() {
    let l = LocalRateLimit::new(meta(), rps(20), rps(10), vec![]);
    assert_eq!(burst(&l, Some(A), 100), 10);
    // A's 90 refusals did not spend the total: B gets its whole share.
    assert_eq!(burst(&l, Some(B), 100), 10);
    assert_eq!(l.check(None).unwrap_err().kind, LimitKind::Total);
}

#[tokio::test(start_paused = true)]
async fn overrides_replace_the_identity_limit() {
    let l = LocalRateLimit::new(
        meta(),
        rps(1000),
        rps(5),
        vec![(vec![Arc::from(A)], NonZeroU32::new(50).unwrap())],
    );
    assert_eq!(burst(&l, Some(A), 100), 50);
    let err = l.check(Some(A)).unwrap_err();
    assert_eq!(err.kind, LimitKind::Override);
    assert_eq!(err.rps.get(), 50);
    assert_eq!(burst(&l, Some(B), 100), 5);

    // The total still bounds an overridden identity.
    let l = LocalRateLimit::new(
        meta(),
        rps(20),
        None,
        vec![(vec![Arc::from(A)], NonZeroU32::new(50).unwrap())],
    );
    assert_eq!(burst(&l, Some(A), 20), 20);
    assert_eq!(l.check(Some(A)).unwrap_err().kind, LimitKind::Total);
    // (That refusal spent one of A's own tokens: governor gives none back.)
    assert_eq!(burst(&l, Some(A), 100), 0);
}

#[tokio::test(start_paused = true)]
async fn an_override_is_shared_by_the_identities_it_lists() {
    let l = LocalRateLimit::new(
        meta(),
        None,
        None,
        vec![(
            vec![Arc::from(A), Arc::from(B)],
            NonZeroU32::new(10).unwrap(),
        )],
    );
    assert_eq!(burst(&l, Some(A), 6), 6);
    assert_eq!(burst(&l, Some(B), 10), 4);
    // No identity limit: others are not limited.
    assert_eq!(burst(&l, Some("c.ns"), 100), 100);
}

#[tokio::test(start_paused = true)]
async fn the_key_bound_is_hit_and_reported() {
    let l = LocalRateLimit::new(meta(), None, rps(2), vec![]).with_max_keys(2);
    assert_eq!(l.check(Some("one")), Ok(Admitted { keys_full: false }));
    assert_eq!(l.check(Some("two")), Ok(Admitted { keys_full: false }));
    // Unmeshed clients do not take a key.
    assert_eq!(l.check(None), Ok(Admitted { keys_full: false }));
    // New identities share the overflow bucket.
    assert_eq!(l.check(Some("three")), Ok(Admitted { keys_full: true }));
    assert_eq!(l.check(Some("four")), Ok(Admitted { keys_full: true }));
    let err = l.check(Some("five")).unwrap_err();
    assert!(err.keys_full);
    assert_eq!(err.kind, LimitKind::Identity);
    // Known identities keep their own.
    assert_eq!(l.check(Some("one")), Ok(Admitted { keys_full: false }));

    // Idle keys are forgotten, so the set does not stay full.
    advance(SWEEP_EVERY).await;
    assert_eq!(l.check(Some("three")), Ok(Admitted { keys_full: false }));
}

#[test]
fn equality_is_the_configuration() {
    let mk = |total| {
        LocalRateLimit::new(
            meta(),
            rps(total),
            rps(1),
            vec![(vec![Arc::from(A)], NonZeroU32::new(3).unwrap())],
        )
    };
    let (a, b) = (mk(10), mk(10));
    assert!(a.check(None).is_ok());
    assert_eq!(a, b, "spent buckets do not matter");
    assert_ne!(a, mk(11));
    assert_eq!(a.meta(), &meta());
    assert_eq!(LimitKind::Override.as_str(), "override");
    assert_eq!(LimitKind::Identity.to_string(), "identity");
}

#[test]
fn retry_after_rounds_up() {
    let err = |ms| RateLimited {
        kind: LimitKind::Total,
        retry_after: Duration::from_millis(ms),
        rps: NonZeroU32::MIN,
        keys_full: false,
    };
    assert_eq!(err(0).retry_after_secs(), 1);
    assert_eq!(err(1).retry_after_secs(), 1);
    assert_eq!(err(1000).retry_after_secs(), 1);
    assert_eq!(err(1001).retry_after_secs(), 2);
}

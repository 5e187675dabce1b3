//! The inbound HTTP stack, top to bottom, in one function: what each
//! request of an inbound HTTP connection goes through after the server
//! edge (`linnet-http`'s proxy: header hygiene, `l5d-client-id`, the
//! orig-proto downgrade, metrics).

use crate::{accept::Conn, authorize, filter, rate_limit, route};
use linnet_http::{EndpointClient, HttpStack};
use std::sync::Arc;

/// The stack of one inbound HTTP connection: route match → route
/// authorization → rate limit → the rule's filters → `app`, the client
/// to the application. One per connection (it carries the client);
/// every request reads the port's policy in force when it arrives.
pub fn stack(conn: Arc<Conn>, app: EndpointClient) -> HttpStack {
    let stack = tower::ServiceBuilder::new()
        .layer(route::layer(conn.clone()))
        .layer(authorize::layer(conn.clone()))
        .layer(rate_limit::layer(conn))
        .layer(filter::layer())
        .service(app);
    HttpStack::new(stack)
}

//! Logging: a `tracing` subscriber whose filter the admin server can change.

use linnet_config::{LogConfig, LogFormat};
use std::sync::{Arc, Mutex};
use tracing_subscriber::{
    EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

/// The admin server's handle on the log filter.
pub(crate) struct Control {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The filter text as given; `EnvFilter`'s own `Display` reorders it.
    current: Mutex<String>,
}

/// Installs the global subscriber; returns the filter control.
pub(crate) fn init(config: &LogConfig) -> anyhow::Result<Arc<Control>> {
    let filter = EnvFilter::builder().parse(&config.filter)?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match config.format {
        LogFormat::Plain => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    Ok(Arc::new(Control {
        handle,
        current: Mutex::new(config.filter.clone()),
    }))
}

impl linnet_app::LogLevel for Control {
    fn get(&self) -> String {
        self.current.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        let parsed = EnvFilter::builder()
            .parse(filter)
            .map_err(|e| e.to_string())?;
        self.handle.reload(parsed).map_err(|e| e.to_string())?;
        if let Ok(mut current) = self.current.lock() {
            *current = filter.to_string();
        }
        Ok(())
    }
}

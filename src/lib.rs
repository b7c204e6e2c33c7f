//! tiercast: outbound WhatsApp campaign dialer daemon.

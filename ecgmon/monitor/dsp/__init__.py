"""Pure signal processing with explicit state: filters, R-peak detection, heart rate. No I/O."""

// Microphone samples as 16-bit little-endian PCM at the context's rate, posted every ~100 ms.
class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.buffer = [];
    this.size = 0;
  }

  process(inputs) {
    const channel = inputs[0]?.[0];
    if (channel) {
      const pcm = new Int16Array(channel.length);
      for (let i = 0; i < channel.length; i++) {
        pcm[i] = Math.max(-1, Math.min(1, channel[i])) * 0x7fff;
      }
      this.buffer.push(pcm);
      this.size += pcm.length;
      if (this.size >= sampleRate / 10) {
        const joined = new Int16Array(this.size);
        let at = 0;
        for (const part of this.buffer) {
          joined.set(part, at);
          at += part.length;
        }
        this.port.postMessage(joined.buffer, [joined.buffer]);
        this.buffer = [];
        this.size = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);

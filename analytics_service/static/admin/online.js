// Re-reads the public counter every 30 seconds, as the widget does, and not while the tab
// is hidden: a hidden tab reads again the moment it is shown.

import { readCounter } from "./api.js";

const REFRESH_MS = 30000;

// Calls onCounter with each fresh read (onError with a failed one, onPause when the tab
// hides); the first read comes REFRESH_MS from now. Returns a function that stops it.
export function watchCounter(siteId, { onCounter, onError, onPause }) {
  let timer = null;
  let paused = false;
  let stopped = false;

  async function tick() {
    timer = null;
    if (document.hidden) {
      paused = true;
      onPause();
      return;
    }
    try {
      const counter = await readCounter(siteId);
      if (!stopped) onCounter(counter);
    } catch (error) {
      if (!stopped) onError(error);
    }
    if (!stopped) timer = setTimeout(tick, REFRESH_MS);
  }

  function visibility() {
    if (document.hidden || !paused || stopped) return;
    paused = false;
    tick();
  }

  document.addEventListener("visibilitychange", visibility);
  timer = setTimeout(tick, REFRESH_MS);
  return () => {
    stopped = true;
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", visibility);
  };
}

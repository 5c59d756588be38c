// One EventSource per page (GET /api/stream); components subscribe to message types.
import { createContext, useContext, useEffect, useRef, useState, type ReactNode } from "react";
import { streamUrl } from "./api";

export type LiveType = "hello" | "workflow" | "execution" | "events" | "resync";
type Handler = (data: any) => void;

class LiveHub {
  private handlers = new Map<LiveType, Set<Handler>>();
  source: EventSource | null = null;
  connected = false;
  private statusListeners = new Set<(c: boolean) => void>();

  start(): void {
    if (this.source || typeof EventSource === "undefined") return;
    const source = new EventSource(streamUrl());
    this.source = source;
    for (const type of ["hello", "workflow", "execution", "events", "resync"] as LiveType[]) {
      source.addEventListener(type, (e) => {
        let data: unknown = null;
        try {
          data = JSON.parse((e as MessageEvent).data);
        } catch {
          return;
        }
        if (type === "hello") this.setConnected(true);
        this.handlers.get(type)?.forEach((h) => h(data));
      });
    }
    source.onerror = () => this.setConnected(false);
  }

  stop(): void {
    this.source?.close();
    this.source = null;
    this.setConnected(false);
  }

  private setConnected(c: boolean): void {
    if (this.connected === c) return;
    this.connected = c;
    this.statusListeners.forEach((l) => l(c));
  }

  onStatus(l: (c: boolean) => void): () => void {
    this.statusListeners.add(l);
    return () => this.statusListeners.delete(l);
  }

  on(type: LiveType, h: Handler): () => void {
    let set = this.handlers.get(type);
    if (!set) this.handlers.set(type, (set = new Set()));
    set.add(h);
    return () => set!.delete(h);
  }
}

const LiveContext = createContext<LiveHub | null>(null);

export function LiveProvider({ children }: { children: ReactNode }) {
  const hub = useRef<LiveHub>(new LiveHub());
  useEffect(() => {
    const h = hub.current;
    h.start();
    return () => h.stop();
  }, []);
  return <LiveContext.Provider value={hub.current}>{children}</LiveContext.Provider>;
}

/** Call `handler` for each live message of `type`; the latest handler is always used. */
export function useLive(type: LiveType, handler: Handler): void {
  const hub = useContext(LiveContext);
  const ref = useRef(handler);
  ref.current = handler;
  useEffect(() => {
    if (!hub) return;
    return hub.on(type, (d) => ref.current(d));
  }, [hub, type]);
}

export function useLiveStatus(): boolean {
  const hub = useContext(LiveContext);
  const [connected, setConnected] = useState(hub?.connected ?? false);
  useEffect(() => (hub ? hub.onStatus(setConnected) : undefined), [hub]);
  return connected;
}

// Assembly-wide attributes. Runtime marshalling is disabled so every P/Invoke in Interop/ must be
// blittable: what crosses the boundary is exactly what the C signatures say, with no hidden copies.
[assembly: System.Runtime.CompilerServices.DisableRuntimeMarshalling]

global using LoraKernels;
global using LoraKernels.Ops;
global using LoraKernels.Tests.Support;
global using NUnit.Framework;

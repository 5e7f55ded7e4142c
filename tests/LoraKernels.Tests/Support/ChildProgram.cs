using System.Diagnostics;

namespace LoraKernels.Tests.Support;

/// <summary>Runs this test program in a child process with other arguments (Program.cs dispatches them).</summary>
internal static class ChildProgram
{
    /// <summary>This program (its apphost, or `dotnet exec` of its assembly) with <paramref name="arguments"/>, output redirected.</summary>
    public static ProcessStartInfo StartInfo(params string[] arguments)
    {
        string host = Environment.ProcessPath ?? throw new InvalidOperationException("no process path");
        var start = new ProcessStartInfo(host) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        if (Path.GetFileNameWithoutExtension(host) == "dotnet")
        {
            start.ArgumentList.Add("exec");
            start.ArgumentList.Add(typeof(ChildProgram).Assembly.Location);
        }
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        return start;
    }

    /// <summary>Runs <paramref name="start"/> to completion (killed and failed after <paramref name="timeout"/>); returns exit code, stdout, stderr.</summary>
    public static (int ExitCode, string Output, string Errors) Run(ProcessStartInfo start, TimeSpan timeout)
    {
        using Process child = Process.Start(start) ?? throw new InvalidOperationException("could not start the child program");
        Task<string> output = child.StandardOutput.ReadToEndAsync();
        Task<string> errors = child.StandardError.ReadToEndAsync();
        if (!child.WaitForExit(timeout))
        {
            child.Kill(entireProcessTree: true);
            Assert.Fail($"{string.Join(' ', start.ArgumentList)} did not finish within {timeout.TotalSeconds} s");
        }
        return (child.ExitCode, output.Result, errors.Result);
    }
}
